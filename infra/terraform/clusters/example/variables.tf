variable "region" {
  description = "AWS region of the cluster."
  type        = string
  default     = "eu-west-1"

  validation {
    condition     = can(regex("^[a-z]{2}(-gov)?-[a-z]+-[0-9]$", var.region))
    error_message = "region must be an AWS region name such as eu-west-1."
  }
}

variable "environment" {
  description = "Environment name used in tags (e.g. dev, load-test, prod)."
  type        = string
  default     = "dev"
}

variable "cluster_name" {
  description = "Name of the EKS cluster (also the prefix of the VPC resources)."
  type        = string
  default     = "millionws"

  validation {
    condition     = can(regex("^[a-z][a-z0-9-]{1,38}[a-z0-9]$", var.cluster_name))
    error_message = "cluster_name must be 3-40 lowercase letters, digits and hyphens, starting with a letter."
  }
}

variable "kubernetes_version" {
  description = "Kubernetes minor version. tests/ops validates deploy/millionws against this same version."
  type        = string
  default     = "1.33"

  validation {
    condition     = can(regex("^1\\.[0-9]{2}$", var.kubernetes_version))
    error_message = "kubernetes_version must look like \"1.33\"."
  }
}

variable "vpc_cidr" {
  description = "IPv4 CIDR of the VPC."
  type        = string
  default     = "10.0.0.0/16"
}

variable "availability_zones" {
  description = "Availability zones of the region to use (2 or 3), e.g. [\"eu-west-1a\", \"eu-west-1b\", \"eu-west-1c\"]."
  type        = list(string)
  default     = ["eu-west-1a", "eu-west-1b", "eu-west-1c"]

  validation {
    condition     = alltrue([for z in var.availability_zones : startswith(z, var.region)])
    error_message = "Every availability zone must belong to var.region (e.g. eu-west-1a for eu-west-1)."
  }
}

variable "single_nat_gateway" {
  description = "One NAT gateway instead of one per zone (cheaper, not zone-redundant)."
  type        = bool
  default     = true
}

variable "api_public_access_cidrs" {
  description = "CIDRs allowed to reach the Kubernetes API from the internet (your office or VPN egress, e.g. [\"203.0.113.7/32\"])."
  type        = list(string)
}

variable "connection_instance_types" {
  description = "Instance types of the connection node group (one millionws pod per node)."
  type        = list(string)
  default     = ["c7i.2xlarge"]
}

variable "connection_nodes" {
  description = "Size of the connection node group: min, desired and max nodes."
  type = object({
    min     = number
    desired = number
    max     = number
  })
  default = {
    min     = 3
    desired = 4
    max     = 20
  }

  validation {
    condition     = var.connection_nodes.min <= var.connection_nodes.desired && var.connection_nodes.desired <= var.connection_nodes.max
    error_message = "connection_nodes needs min <= desired <= max."
  }
}

variable "system_instance_types" {
  description = "Instance types of the system node group (CoreDNS, AWS Load Balancer Controller, Prometheus, Grafana, Prometheus Adapter, Locust)."
  type        = list(string)
  default     = ["m7i.xlarge"]
}

variable "system_nodes" {
  description = "Size of the system node group: min, desired and max nodes."
  type = object({
    min     = number
    desired = number
    max     = number
  })
  default = {
    min     = 2
    desired = 2
    max     = 6
  }

  validation {
    condition     = var.system_nodes.min <= var.system_nodes.desired && var.system_nodes.desired <= var.system_nodes.max
    error_message = "system_nodes needs min <= desired <= max."
  }
}

variable "nofile_limit" {
  description = "Open-files limit of every container on the connection nodes."
  type        = number
  default     = 2097152
}
