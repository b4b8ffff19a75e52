# EKS managed node group for connection-heavy pods: an AL2023 launch template
# whose user data raises the kernel and container limits a million WebSockets
# need (fs.nr_open, fs.file-max, somaxconn, port range, conntrack, containerd's
# LimitNOFILE), IMDSv2 only, encrypted gp3 root volume.

data "aws_partition" "current" {}

locals {
  user_data_script = templatefile("${path.module}/user-data.sh.tftpl", {
    fs_nr_open          = var.fs_nr_open
    fs_file_max         = var.fs_file_max
    somaxconn           = var.somaxconn
    ip_local_port_range = var.ip_local_port_range
    conntrack_max       = var.conntrack_max
    tcp_mem_buffers     = var.tcp_mem_buffers
    nofile_limit        = var.nofile_limit
  })

  # AL2023 managed node groups take MIME multi-part user data; EKS appends its
  # own NodeConfig part, cloud-init runs this script before nodeadm starts
  # containerd and the kubelet.
  user_data = <<-MIME
    MIME-Version: 1.0
    Content-Type: multipart/mixed; boundary="MILLIONWS"

    --MILLIONWS
    Content-Type: text/x-shellscript; charset="us-ascii"

    ${local.user_data_script}
    --MILLIONWS--
  MIME
}

resource "terraform_data" "limits_check" {
  input = var.nofile_limit

  lifecycle {
    precondition {
      condition     = var.fs_nr_open >= var.nofile_limit
      error_message = "fs_nr_open must be >= nofile_limit, or containerd cannot start with that LimitNOFILE."
    }
    precondition {
      condition     = var.min_size <= var.desired_size && var.desired_size <= var.max_size
      error_message = "Need min_size <= desired_size <= max_size."
    }
  }
}

resource "aws_iam_role" "node" {
  name = "${var.cluster_name}-${var.name}-node"
  assume_role_policy = jsonencode({
    Version = "2012-10-17"
    Statement = [{
      Effect    = "Allow"
      Principal = { Service = "ec2.amazonaws.com" }
      Action    = "sts:AssumeRole"
    }]
  })

  tags = var.tags
}

resource "aws_iam_role_policy_attachment" "node" {
  for_each = toset([
    "AmazonEKSWorkerNodePolicy",
    "AmazonEKS_CNI_Policy",
    "AmazonEC2ContainerRegistryReadOnly",
    "AmazonSSMManagedInstanceCore",
  ])

  role       = aws_iam_role.node.name
  policy_arn = "arn:${data.aws_partition.current.partition}:iam::aws:policy/${each.key}"
}

resource "aws_launch_template" "this" {
  name_prefix = "${var.cluster_name}-${var.name}-"
  description = "millionws ${var.name} nodes: raised fd, conntrack and socket limits"
  user_data   = base64encode(local.user_data)

  update_default_version = true

  block_device_mappings {
    device_name = "/dev/xvda"
    ebs {
      volume_size           = var.disk_size_gb
      volume_type           = "gp3"
      encrypted             = true
      delete_on_termination = true
    }
  }

  metadata_options {
    http_endpoint               = "enabled"
    http_tokens                 = "required"
    http_put_response_hop_limit = 1
  }

  monitoring {
    enabled = true
  }

  tag_specifications {
    resource_type = "instance"
    tags          = merge(var.tags, { Name = "${var.cluster_name}-${var.name}" })
  }

  tags = var.tags
}

resource "aws_eks_node_group" "this" {
  cluster_name    = var.cluster_name
  node_group_name = var.name
  version         = var.kubernetes_version
  node_role_arn   = aws_iam_role.node.arn
  subnet_ids      = var.subnet_ids
  ami_type        = var.ami_type
  capacity_type   = var.capacity_type
  instance_types  = var.instance_types
  labels          = var.labels

  launch_template {
    id      = aws_launch_template.this.id
    version = aws_launch_template.this.latest_version
  }

  scaling_config {
    min_size     = var.min_size
    max_size     = var.max_size
    desired_size = var.desired_size
  }

  update_config {
    # Replace one node at a time: its pod's clients reconnect elsewhere.
    max_unavailable = 1
  }

  dynamic "taint" {
    for_each = var.taints
    content {
      key    = taint.value.key
      value  = taint.value.value
      effect = taint.value.effect
    }
  }

  tags = var.tags

  lifecycle {
    ignore_changes = [scaling_config[0].desired_size]
  }

  depends_on = [
    aws_iam_role_policy_attachment.node,
    terraform_data.limits_check,
  ]
}
