output "vpc_id" {
  description = "ID of the VPC."
  value       = aws_vpc.this.id
}

output "vpc_cidr_block" {
  description = "IPv4 CIDR of the VPC."
  value       = aws_vpc.this.cidr_block
}

output "public_subnet_ids" {
  description = "Public subnets (internet-facing NLB, NAT gateways), one per zone."
  value       = aws_subnet.public[*].id
}

output "private_subnet_ids" {
  description = "Private subnets (EKS control-plane ENIs, nodes, pods), one per zone."
  value       = aws_subnet.private[*].id
}

output "azs" {
  description = "Availability zones in use."
  value       = local.azs
}
