variable "cluster_name" {
  description = "EKS cluster the node group joins."
  type        = string
}

variable "name" {
  description = "Node group name, unique in the cluster, e.g. \"connections\" or \"system\"."
  type        = string

  validation {
    condition     = can(regex("^[a-z][a-z0-9-]{0,37}$", var.name))
    error_message = "name must be at most 38 lowercase letters, digits and hyphens, starting with a letter."
  }
}

variable "kubernetes_version" {
  description = "Kubernetes version of the nodes; keep it equal to the control plane's."
  type        = string

  validation {
    condition     = can(regex("^1\\.[0-9]{2}$", var.kubernetes_version))
    error_message = "kubernetes_version must look like \"1.33\"."
  }
}

variable "subnet_ids" {
  description = "Private subnets the nodes are placed in (one per zone)."
  type        = list(string)

  validation {
    condition     = length(var.subnet_ids) >= 1
    error_message = "subnet_ids must not be empty."
  }
}

variable "instance_types" {
  description = "EC2 instance types. Connection-heavy pods want network bandwidth and memory more than CPU: c6in/c7i/m7i sizes with at least 8 GiB. The first type that has capacity is used."
  type        = list(string)
  default     = ["c7i.2xlarge"]

  validation {
    condition     = length(var.instance_types) > 0 && alltrue([for t in var.instance_types : can(regex("^[a-z][a-z0-9-]*\\.[a-z0-9]+$", t))])
    error_message = "instance_types must be a non-empty list of EC2 instance type names such as c7i.2xlarge."
  }
}

variable "capacity_type" {
  description = "ON_DEMAND or SPOT. Spot reclaims a node with two minutes' notice, dropping all its connections: fine for load tests, not for production."
  type        = string
  default     = "ON_DEMAND"

  validation {
    condition     = contains(["ON_DEMAND", "SPOT"], var.capacity_type)
    error_message = "capacity_type must be ON_DEMAND or SPOT."
  }
}

variable "ami_type" {
  description = "EKS-optimized AMI family. The user data is written for Amazon Linux 2023 (nodeadm)."
  type        = string
  default     = "AL2023_x86_64_STANDARD"

  validation {
    condition     = contains(["AL2023_x86_64_STANDARD", "AL2023_ARM_64_STANDARD"], var.ami_type)
    error_message = "ami_type must be AL2023_x86_64_STANDARD or AL2023_ARM_64_STANDARD (the user data relies on AL2023)."
  }
}

variable "min_size" {
  description = "Minimum number of nodes."
  type        = number
  default     = 3

  validation {
    condition     = var.min_size >= 0
    error_message = "min_size must be >= 0."
  }
}

variable "max_size" {
  description = "Maximum number of nodes (the HPA's maxReplicas needs as many nodes, one millionws pod per node)."
  type        = number
  default     = 20

  validation {
    condition     = var.max_size >= 1
    error_message = "max_size must be >= 1."
  }
}

variable "desired_size" {
  description = "Initial number of nodes; later changes by the cluster autoscaler or Karpenter are ignored."
  type        = number
  default     = 3

  validation {
    condition     = var.desired_size >= 0
    error_message = "desired_size must be >= 0."
  }
}

variable "disk_size_gb" {
  description = "Root volume size in GiB (gp3, encrypted)."
  type        = number
  default     = 50

  validation {
    condition     = var.disk_size_gb >= 20 && var.disk_size_gb <= 1000
    error_message = "disk_size_gb must be between 20 and 1000."
  }
}

variable "labels" {
  description = "Kubernetes labels on the nodes (deploy/millionws selects millionws.io/pool=connections)."
  type        = map(string)
  default     = {}
}

variable "taints" {
  description = "Kubernetes taints on the nodes, e.g. to keep other workloads off the connection nodes."
  type = list(object({
    key    = string
    value  = string
    effect = string
  }))
  default = []

  validation {
    condition     = alltrue([for t in var.taints : contains(["NO_SCHEDULE", "NO_EXECUTE", "PREFER_NO_SCHEDULE"], t.effect)])
    error_message = "taint effect must be NO_SCHEDULE, NO_EXECUTE or PREFER_NO_SCHEDULE."
  }
}

# --- kernel settings for many connections (see deploy/PRODUCTION.md) ----------

variable "nofile_limit" {
  description = "Open-files limit (LimitNOFILE) of containerd and so of every container on the node. One WebSocket is one file descriptor; a worker process needs its share of the pod's connections plus some slack."
  type        = number
  default     = 2097152

  validation {
    condition     = var.nofile_limit >= 65536
    error_message = "nofile_limit must be at least 65536."
  }
}

variable "fs_nr_open" {
  description = "fs.nr_open: the ceiling for any process's open-files limit. Must be >= nofile_limit (the kernel default 1048576 caps it)."
  type        = number
  default     = 4194304
}

variable "fs_file_max" {
  description = "fs.file-max: open files for the whole node (all pods)."
  type        = number
  default     = 8388608

  validation {
    condition     = var.fs_file_max >= 1048576
    error_message = "fs_file_max must be at least 1048576."
  }
}

variable "somaxconn" {
  description = "net.core.somaxconn in the host network namespace (accept queue cap for host-network listeners; pods get their own namespace with the kernel default of 4096)."
  type        = number
  default     = 65535

  validation {
    condition     = var.somaxconn >= 1024 && var.somaxconn <= 2147483647
    error_message = "somaxconn must be between 1024 and 2147483647."
  }
}

variable "ip_local_port_range" {
  description = "net.ipv4.ip_local_port_range of the host (two ports separated by a space)."
  type        = string
  default     = "1024 65535"

  validation {
    condition     = can(regex("^[0-9]{4,5} [0-9]{4,5}$", var.ip_local_port_range))
    error_message = "ip_local_port_range must be two port numbers separated by one space, e.g. \"1024 65535\"."
  }
}

variable "conntrack_max" {
  description = "net.netfilter.nf_conntrack_max. Every client connection through kube-proxy's NodePort (NLB instance targets) is one conntrack entry on the node. kube-proxy also writes this value at start (max(conntrack.maxPerCore x cores, conntrack.min)); see deploy/PRODUCTION.md."
  type        = number
  default     = 2097152

  validation {
    condition     = var.conntrack_max >= 262144
    error_message = "conntrack_max must be at least 262144."
  }
}

variable "tcp_mem_buffers" {
  description = "net.ipv4.tcp_rmem and tcp_wmem (min default max, bytes). New pod network namespaces inherit them from the host. Smaller defaults bound the kernel memory of bursts across a million mostly idle sockets."
  type        = string
  default     = "4096 16384 4194304"

  validation {
    condition     = can(regex("^[0-9]+ [0-9]+ [0-9]+$", var.tcp_mem_buffers))
    error_message = "tcp_mem_buffers must be three numbers separated by spaces."
  }
}

variable "tags" {
  description = "Tags added to every resource."
  type        = map(string)
  default     = {}
}
