data "aws_caller_identity" "current" {}

data "aws_partition" "current" {}

data "aws_region" "current" {}

# The provider's default_tags, copied onto what Auto Scaling launches (it does not inherit them).
data "aws_default_tags" "current" {}

locals {
  partition      = data.aws_partition.current.partition
  region         = data.aws_region.current.name
  account        = data.aws_caller_identity.current.account_id
  cluster_name   = "sciflow-${var.name}"
  gpu_provider   = "sciflow-${var.name}-gpu"
  ecs_arn_prefix = "arn:${local.partition}:ecs:${local.region}:${local.account}"
}

resource "aws_cloudwatch_log_group" "this" {
  # One group for the unit's flow runs, Dask clusters, training tasks and Batch jobs; each
  # writes under its own stream prefix.
  name              = "/sciflow/${var.name}"
  retention_in_days = var.log_retention_days
  kms_key_id        = var.kms_key_arn
}

resource "aws_ecs_cluster" "this" {
  name = local.cluster_name

  setting {
    name  = "containerInsights"
    value = "enabled"
  }
}

resource "aws_ecs_cluster_capacity_providers" "this" {
  cluster_name = aws_ecs_cluster.this.name
  capacity_providers = concat(
    ["FARGATE", "FARGATE_SPOT"],
    aws_ecs_capacity_provider.gpu[*].name,
  )

  default_capacity_provider_strategy {
    capacity_provider = "FARGATE"
    weight            = 1
  }
}

# --- Cloud Map: the parameter server's DNS name (tasks/training/ecs.py) -----------------

resource "aws_service_discovery_private_dns_namespace" "this" {
  name        = var.cloud_map_namespace
  description = "sciflow ${var.name}: parameter servers of distributed training runs"
  vpc         = var.vpc_id
}

# --- Task execution role: pull images, write logs, read the tasks' secrets --------------

data "aws_iam_policy_document" "ecs_tasks_assume" {
  statement {
    actions = ["sts:AssumeRole"]
    principals {
      type        = "Service"
      identifiers = ["ecs-tasks.amazonaws.com"]
    }
    condition {
      test     = "StringEquals"
      variable = "aws:SourceAccount"
      values   = [local.account]
    }
  }
}

resource "aws_iam_role" "execution" {
  name               = "sciflow-${var.name}-ecs-execution"
  description        = "ECS pulls sciflow images and writes task logs with this role"
  assume_role_policy = data.aws_iam_policy_document.ecs_tasks_assume.json
}

data "aws_iam_policy_document" "execution" {
  statement {
    sid = "PullSciflowImages"
    actions = [
      "ecr:BatchCheckLayerAvailability",
      "ecr:BatchGetImage",
      "ecr:GetDownloadUrlForLayer",
    ]
    resources = var.ecr_repository_arns
  }

  statement {
    sid = "EcrLogin"
    # GetAuthorizationToken has no resource-level permissions.
    actions   = ["ecr:GetAuthorizationToken"]
    resources = ["*"]
  }

  statement {
    sid       = "WriteTaskLogs"
    actions   = ["logs:CreateLogStream", "logs:PutLogEvents"]
    resources = ["${aws_cloudwatch_log_group.this.arn}:*"]
  }
}

resource "aws_iam_role_policy" "execution" {
  name   = "pull-images-write-logs"
  role   = aws_iam_role.execution.id
  policy = data.aws_iam_policy_document.execution.json
}

# --- GPU capacity: EC2 hosts for the gpu size class --------------------------------------

data "aws_ssm_parameter" "gpu_ami" {
  count = var.gpu_enabled ? 1 : 0
  name  = "/aws/service/ecs/optimized-ami/amazon-linux-2/gpu/recommended/image_id"
}

data "aws_iam_policy_document" "ec2_assume" {
  statement {
    actions = ["sts:AssumeRole"]
    principals {
      type        = "Service"
      identifiers = ["ec2.amazonaws.com"]
    }
  }
}

resource "aws_iam_role" "gpu_host" {
  count              = var.gpu_enabled ? 1 : 0
  name               = "sciflow-${var.name}-ecs-gpu-host"
  description        = "The ECS agent on GPU hosts joins ${local.cluster_name} with this role"
  assume_role_policy = data.aws_iam_policy_document.ec2_assume.json
}

data "aws_iam_policy_document" "gpu_host" {
  statement {
    sid = "JoinTheUnitsCluster"
    actions = [
      "ecs:DeregisterContainerInstance",
      "ecs:RegisterContainerInstance",
      "ecs:SubmitAttachmentStateChanges",
      "ecs:SubmitContainerStateChange",
      "ecs:SubmitTaskStateChange",
      "ecs:UpdateContainerInstancesState",
    ]
    resources = [aws_ecs_cluster.this.arn]
  }

  statement {
    sid       = "AgentSessions"
    actions   = ["ecs:Poll", "ecs:StartTelemetrySession", "ecs:PutSystemLogEvents"]
    resources = ["${local.ecs_arn_prefix}:container-instance/${local.cluster_name}/*"]
  }

  statement {
    sid = "AgentDiscovery"
    # Neither has resource-level permissions.
    actions   = ["ecs:DiscoverPollEndpoint", "ecr:GetAuthorizationToken"]
    resources = ["*"]
  }

  statement {
    sid = "PullSciflowImages"
    actions = [
      "ecr:BatchCheckLayerAvailability",
      "ecr:BatchGetImage",
      "ecr:GetDownloadUrlForLayer",
    ]
    resources = var.ecr_repository_arns
  }
}

resource "aws_iam_role_policy" "gpu_host" {
  count  = var.gpu_enabled ? 1 : 0
  name   = "ecs-agent"
  role   = aws_iam_role.gpu_host[0].id
  policy = data.aws_iam_policy_document.gpu_host.json
}

resource "aws_iam_instance_profile" "gpu_host" {
  count = var.gpu_enabled ? 1 : 0
  name  = "sciflow-${var.name}-ecs-gpu-host"
  role  = aws_iam_role.gpu_host[0].name
}

resource "aws_security_group" "gpu_host" {
  count       = var.gpu_enabled ? 1 : 0
  name        = "${var.name}-ecs-gpu-host"
  description = "GPU hosts of the ECS cluster: no inbound; HTTPS out for ECR, S3 and the ECS API"
  vpc_id      = var.vpc_id

  tags = { Name = "${var.name}-ecs-gpu-host" }
}

resource "aws_vpc_security_group_egress_rule" "gpu_host_https" {
  count             = var.gpu_enabled ? 1 : 0
  security_group_id = aws_security_group.gpu_host[0].id
  description       = "HTTPS to AWS APIs (through NAT or VPC endpoints)"
  cidr_ipv4         = "0.0.0.0/0"
  ip_protocol       = "tcp"
  from_port         = 443
  to_port           = 443
}

resource "aws_vpc_security_group_egress_rule" "gpu_host_vpc_dns" {
  count             = var.gpu_enabled ? 1 : 0
  security_group_id = aws_security_group.gpu_host[0].id
  description       = "DNS to the VPC resolver"
  cidr_ipv4         = var.vpc_cidr_block
  ip_protocol       = "udp"
  from_port         = 53
  to_port           = 53
}

resource "aws_launch_template" "gpu" {
  count                  = var.gpu_enabled ? 1 : 0
  name_prefix            = "sciflow-${var.name}-gpu-"
  image_id               = data.aws_ssm_parameter.gpu_ami[0].value
  instance_type          = var.gpu_instance_type
  update_default_version = true
  vpc_security_group_ids = [aws_security_group.gpu_host[0].id]
  user_data = base64encode(<<-EOT
    #!/bin/bash
    cat >> /etc/ecs/ecs.config <<'CONFIG'
    ECS_CLUSTER=${local.cluster_name}
    ECS_ENABLE_GPU_SUPPORT=true
    ECS_ENABLE_TASK_IAM_ROLE=true
    ECS_AWSVPC_BLOCK_IMDS=true
    CONFIG
  EOT
  )

  iam_instance_profile {
    arn = aws_iam_instance_profile.gpu_host[0].arn
  }

  metadata_options {
    http_endpoint               = "enabled"
    http_tokens                 = "required"
    http_put_response_hop_limit = 1
  }

  monitoring {
    enabled = true
  }

  block_device_mappings {
    device_name = "/dev/xvda"
    ebs {
      volume_size = var.gpu_root_volume_gib
      volume_type = "gp3"
      encrypted   = true
      # The account's EBS key: Auto Scaling and Batch launch with service-linked roles that a
      # customer key's policy would have to name, and they may not exist before the first launch.
      delete_on_termination = true
    }
  }

  tag_specifications {
    resource_type = "instance"
    tags          = merge(data.aws_default_tags.current.tags, { Name = "${local.gpu_provider}" })
  }

  tag_specifications {
    resource_type = "volume"
    tags          = data.aws_default_tags.current.tags
  }
}

resource "aws_autoscaling_group" "gpu" {
  #checkov:skip=CKV2_AWS_15:no load balancer: ECS places tasks on these hosts and scales the group itself
  count                 = var.gpu_enabled ? 1 : 0
  name_prefix           = "sciflow-${var.name}-gpu-"
  min_size              = 0
  max_size              = var.gpu_max_instances
  vpc_zone_identifier   = var.subnet_ids
  protect_from_scale_in = true # ECS managed termination protection drains hosts first

  launch_template {
    id      = aws_launch_template.gpu[0].id
    version = "$Latest"
  }

  tag {
    key                 = "AmazonECSManaged"
    value               = "true"
    propagate_at_launch = true
  }

  dynamic "tag" {
    for_each = data.aws_default_tags.current.tags
    content {
      key                 = tag.key
      value               = tag.value
      propagate_at_launch = true
    }
  }

  lifecycle {
    # The capacity provider sets the desired count.
    ignore_changes = [desired_capacity]
  }
}

resource "aws_ecs_capacity_provider" "gpu" {
  count = var.gpu_enabled ? 1 : 0
  name  = local.gpu_provider

  auto_scaling_group_provider {
    auto_scaling_group_arn         = aws_autoscaling_group.gpu[0].arn
    managed_termination_protection = "ENABLED"

    managed_scaling {
      status                    = "ENABLED"
      target_capacity           = 100
      minimum_scaling_step_size = 1
      maximum_scaling_step_size = var.gpu_max_instances
    }
  }
}
