output "cluster_name" {
  description = "Name of the EKS cluster."
  value       = module.eks.cluster_name
}

output "cluster_endpoint" {
  description = "Kubernetes API endpoint."
  value       = module.eks.cluster_endpoint
}

output "region" {
  description = "AWS region of the cluster."
  value       = var.region
}

output "kubeconfig_command" {
  description = "Command that writes a kubeconfig entry for the cluster."
  value       = "aws eks update-kubeconfig --region ${var.region} --name ${module.eks.cluster_name}"
}

output "vpc_id" {
  description = "ID of the VPC."
  value       = module.vpc.vpc_id
}

output "public_subnet_ids" {
  description = "Public subnets (where the NLB is placed)."
  value       = module.vpc.public_subnet_ids
}

output "connection_node_group" {
  description = "Name of the node group deploy/millionws runs on."
  value       = module.connection_nodes.node_group_name
}
