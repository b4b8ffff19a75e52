output "node_group_name" {
  description = "Name of the EKS managed node group."
  value       = aws_eks_node_group.this.node_group_name
}

output "node_role_arn" {
  description = "IAM role of the nodes."
  value       = aws_iam_role.node.arn
}

output "launch_template_id" {
  description = "Launch template carrying the kernel-tuning user data."
  value       = aws_launch_template.this.id
}

output "user_data_script" {
  description = "The rendered node tuning script (for review)."
  value       = local.user_data_script
}
