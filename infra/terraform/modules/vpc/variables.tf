variable "name" {
  description = "Name prefix for every VPC resource (usually the EKS cluster name)."
  type        = string

  validation {
    condition     = can(regex("^[a-z][a-z0-9-]{1,38}[a-z0-9]$", var.name))
    error_message = "name must be 3-40 characters of lowercase letters, digits and hyphens, starting with a letter."
  }
}

variable "cluster_name" {
  description = "EKS cluster name, used in the kubernetes.io/cluster/<name> subnet tags that the AWS Load Balancer Controller discovers subnets by."
  type        = string
}

variable "cidr_block" {
  description = "IPv4 CIDR of the VPC. With the VPC CNI every pod takes a VPC address, so leave room: /16 gives 65k addresses."
  type        = string
  default     = "10.0.0.0/16"

  validation {
    condition     = can(cidrhost(var.cidr_block, 0)) && tonumber(split("/", var.cidr_block)[1]) <= 16
    error_message = "cidr_block must be a valid IPv4 CIDR of /16 or larger (one /18 of pod addresses per zone)."
  }
}

variable "availability_zones" {
  description = "Availability zones to place one public and one private subnet in, e.g. [\"eu-west-1a\", \"eu-west-1b\", \"eu-west-1c\"]."
  type        = list(string)

  validation {
    condition     = length(var.availability_zones) >= 2 && length(var.availability_zones) <= 3 && length(distinct(var.availability_zones)) == length(var.availability_zones)
    error_message = "availability_zones must name 2 or 3 distinct zones (EKS needs at least two)."
  }
}

variable "single_nat_gateway" {
  description = "One NAT gateway for all zones (cheaper) instead of one per zone (survives a zone outage). Nodes only use NAT for image pulls and AWS APIs; client WebSocket traffic enters through the NLB in the public subnets."
  type        = bool
  default     = true
}

variable "flow_logs_retention_days" {
  description = "Retention of the VPC flow logs in CloudWatch Logs, in days (0 disables flow logs)."
  type        = number
  default     = 365

  validation {
    condition     = contains([0, 1, 3, 5, 7, 14, 30, 60, 90, 120, 150, 180, 365, 400, 545, 731, 1096, 1827, 2192, 2557, 2922, 3288, 3653], var.flow_logs_retention_days)
    error_message = "flow_logs_retention_days must be 0 or a retention CloudWatch Logs accepts (1, 3, 5, 7, 14, 30, ..., 365, ...)."
  }
}

variable "kms_key_arn" {
  description = "KMS key ARN that encrypts the flow-log group. Empty: a key is created."
  type        = string
  default     = ""
}

variable "tags" {
  description = "Tags added to every resource."
  type        = map(string)
  default     = {}
}
