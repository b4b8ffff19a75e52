# Example cluster: VPC + EKS + two managed node groups.
#   connection nodes: tainted and labelled for deploy/millionws, kernel tuned.
#   system nodes:     everything else (CoreDNS, controllers, monitoring, Locust).

locals {
  connection_labels = { "millionws.io/pool" = "connections" }
  connection_taints = [{ key = "millionws.io/dedicated", value = "connections", effect = "NO_SCHEDULE" }]
}

module "vpc" {
  source = "../../modules/vpc"

  name               = var.cluster_name
  cluster_name       = var.cluster_name
  cidr_block         = var.vpc_cidr
  availability_zones = var.availability_zones
  single_nat_gateway = var.single_nat_gateway
}

module "eks" {
  source = "../../modules/eks"

  cluster_name        = var.cluster_name
  kubernetes_version  = var.kubernetes_version
  subnet_ids          = module.vpc.private_subnet_ids
  public_access_cidrs = var.api_public_access_cidrs
}

module "system_nodes" {
  source = "../../modules/nodegroup"

  cluster_name       = module.eks.cluster_name
  name               = "system"
  kubernetes_version = var.kubernetes_version
  subnet_ids         = module.vpc.private_subnet_ids
  instance_types     = var.system_instance_types
  min_size           = var.system_nodes.min
  desired_size       = var.system_nodes.desired
  max_size           = var.system_nodes.max
  labels             = { "millionws.io/pool" = "system" }
}

module "connection_nodes" {
  source = "../../modules/nodegroup"

  cluster_name       = module.eks.cluster_name
  name               = "connections"
  kubernetes_version = var.kubernetes_version
  subnet_ids         = module.vpc.private_subnet_ids
  instance_types     = var.connection_instance_types
  min_size           = var.connection_nodes.min
  desired_size       = var.connection_nodes.desired
  max_size           = var.connection_nodes.max
  labels             = local.connection_labels
  taints             = local.connection_taints
  nofile_limit       = var.nofile_limit
}

# CoreDNS needs a schedulable node before it can become healthy.
resource "aws_eks_addon" "coredns" {
  cluster_name                = module.eks.cluster_name
  addon_name                  = "coredns"
  resolve_conflicts_on_create = "OVERWRITE"
  resolve_conflicts_on_update = "PRESERVE"

  depends_on = [module.system_nodes]
}
