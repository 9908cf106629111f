data "aws_caller_identity" "current" {}

data "aws_partition" "current" {}

data "aws_region" "current" {}

data "aws_default_tags" "current" {}

locals {
  prefix         = "sciflow-${var.name}"
  ecs_arn_prefix = "arn:${data.aws_partition.current.partition}:ecs:${data.aws_region.current.name}:${data.aws_caller_identity.current.account_id}"
  # Batch names the ECS cluster of a compute environment AWSBatch-<environment>-<uuid>.
  batch_clusters = "${local.ecs_arn_prefix}:cluster/AWSBatch-${local.prefix}-*"
  secrets        = [for k in sort(keys(var.secrets)) : { name = k, valueFrom = var.secrets[k] }]

  efs_volume = {
    name = "efs"
    efsVolumeConfiguration = {
      fileSystemId      = var.efs_file_system_id
      transitEncryption = "ENABLED"
      authorizationConfig = {
        accessPointId = var.efs_access_point_id
        iam           = "ENABLED"
      }
    }
  }
  efs_mount = { sourceVolume = "efs", containerPath = var.efs_mount_path, readOnly = false }
}

# Nodes of a multi-node job sit close together: MPI and DDP traffic is latency-bound.
resource "aws_placement_group" "this" {
  name     = "${local.prefix}-multinode"
  strategy = "cluster"
}

# --- Instance role: the ECS agent on Batch nodes ----------------------------------------

data "aws_iam_policy_document" "ec2_assume" {
  statement {
    actions = ["sts:AssumeRole"]
    principals {
      type        = "Service"
      identifiers = ["ec2.amazonaws.com"]
    }
  }
}

resource "aws_iam_role" "instance" {
  name               = "${local.prefix}-batch-instance"
  description        = "The ECS agent on the unit's Batch nodes"
  assume_role_policy = data.aws_iam_policy_document.ec2_assume.json
}

data "aws_iam_policy_document" "instance" {
  statement {
    sid = "JoinBatchClusters"
    actions = [
      "ecs:DeregisterContainerInstance",
      "ecs:RegisterContainerInstance",
      "ecs:SubmitAttachmentStateChanges",
      "ecs:SubmitContainerStateChange",
      "ecs:SubmitTaskStateChange",
      "ecs:UpdateContainerInstancesState",
    ]
    resources = [local.batch_clusters]
  }

  statement {
    sid       = "AgentSessions"
    actions   = ["ecs:Poll", "ecs:StartTelemetrySession", "ecs:PutSystemLogEvents"]
    resources = ["${local.ecs_arn_prefix}:container-instance/AWSBatch-${local.prefix}-*"]
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

  statement {
    sid       = "WriteJobLogs"
    actions   = ["logs:CreateLogStream", "logs:PutLogEvents"]
    resources = ["${var.log_group_arn}:*"]
  }
}

resource "aws_iam_role_policy" "instance" {
  name   = "ecs-agent"
  role   = aws_iam_role.instance.id
  policy = data.aws_iam_policy_document.instance.json
}

resource "aws_iam_instance_profile" "instance" {
  name = "${local.prefix}-batch-instance"
  role = aws_iam_role.instance.name
}

# --- Network: nodes talk to each other freely (MPI, NCCL), to little else ---------------

resource "aws_security_group" "nodes" {
  name        = "${var.name}-batch-nodes"
  description = "Multi-node Batch jobs: any port between nodes of the unit, HTTPS out"
  vpc_id      = var.vpc_id

  tags = { Name = "${var.name}-batch-nodes" }
}

resource "aws_vpc_security_group_ingress_rule" "nodes_from_nodes" {
  #checkov:skip=CKV_AWS_25:the source is this group itself, not 0.0.0.0/0; MPI and NCCL pick ports at run time
  security_group_id            = aws_security_group.nodes.id
  description                  = "MPI and NCCL between the nodes of a job (ports chosen at run time)"
  referenced_security_group_id = aws_security_group.nodes.id
  ip_protocol                  = "tcp"
  from_port                    = 1024
  to_port                      = 65535
}

resource "aws_vpc_security_group_egress_rule" "nodes_to_nodes" {
  security_group_id            = aws_security_group.nodes.id
  description                  = "MPI and NCCL between the nodes of a job"
  referenced_security_group_id = aws_security_group.nodes.id
  ip_protocol                  = "tcp"
  from_port                    = 1024
  to_port                      = 65535
}

resource "aws_vpc_security_group_egress_rule" "nodes_https" {
  security_group_id = aws_security_group.nodes.id
  description       = "HTTPS to AWS APIs, S3 and the Prefect API"
  cidr_ipv4         = "0.0.0.0/0"
  ip_protocol       = "tcp"
  from_port         = 443
  to_port           = 443
}

resource "aws_vpc_security_group_egress_rule" "nodes_nfs" {
  security_group_id = aws_security_group.nodes.id
  description       = "NFS to the EFS mount targets"
  cidr_ipv4         = var.vpc_cidr_block
  ip_protocol       = "tcp"
  from_port         = 2049
  to_port           = 2049
}

resource "aws_vpc_security_group_egress_rule" "nodes_lustre" {
  security_group_id = aws_security_group.nodes.id
  description       = "Lustre to the FSx file system"
  cidr_ipv4         = var.vpc_cidr_block
  ip_protocol       = "tcp"
  from_port         = 988
  to_port           = 988
}

resource "aws_vpc_security_group_egress_rule" "nodes_dns" {
  security_group_id = aws_security_group.nodes.id
  description       = "DNS to the VPC resolver"
  cidr_ipv4         = var.vpc_cidr_block
  ip_protocol       = "udp"
  from_port         = 53
  to_port           = 53
}

resource "aws_launch_template" "nodes" {
  name_prefix            = "${local.prefix}-batch-"
  update_default_version = true

  metadata_options {
    http_endpoint               = "enabled"
    http_tokens                 = "required"
    http_put_response_hop_limit = 1
  }

  block_device_mappings {
    device_name = "/dev/xvda"
    ebs {
      volume_size = 100
      volume_type = "gp3"
      encrypted   = true
      # The account's EBS key: Auto Scaling and Batch launch with service-linked roles that a
      # customer key's policy would have to name, and they may not exist before the first launch.
      delete_on_termination = true
    }
  }

  tag_specifications {
    resource_type = "volume"
    tags          = data.aws_default_tags.current.tags
  }
}

# --- Compute environments and the queue --------------------------------------------------

resource "aws_batch_compute_environment" "this" {
  for_each = {
    cpu = { types = var.cpu_instance_types, max_vcpus = var.cpu_max_vcpus, ami = "ECS_AL2" }
    gpu = { types = var.gpu_instance_types, max_vcpus = var.gpu_max_vcpus, ami = "ECS_AL2_NVIDIA" }
  }

  compute_environment_name_prefix = "${local.prefix}-${each.key}-"
  type                            = "MANAGED"
  # No service_role: Batch uses its service-linked role (AWSServiceRoleForBatch).

  compute_resources {
    type                = "EC2"
    allocation_strategy = "BEST_FIT_PROGRESSIVE"
    min_vcpus           = 0
    max_vcpus           = each.value.max_vcpus
    instance_type       = each.value.types
    instance_role       = aws_iam_instance_profile.instance.arn
    placement_group     = aws_placement_group.this.name
    subnets             = [var.subnet_id]
    security_group_ids  = [aws_security_group.nodes.id]
    tags                = data.aws_default_tags.current.tags

    ec2_configuration {
      image_type = each.value.ami
    }

    launch_template {
      launch_template_id = aws_launch_template.nodes.id
      version            = aws_launch_template.nodes.latest_version
    }
  }

  lifecycle {
    create_before_destroy = true
  }
}

# One queue for both runtimes: a training node asks for GPUs, which only the GPU environment
# has, so Batch places each job on the environment that can run it.
resource "aws_batch_job_queue" "this" {
  name     = "${local.prefix}-multinode"
  state    = "ENABLED"
  priority = 1

  compute_environment_order {
    order               = 1
    compute_environment = aws_batch_compute_environment.this["cpu"].arn
  }

  compute_environment_order {
    order               = 2
    compute_environment = aws_batch_compute_environment.this["gpu"].arn
  }
}

# --- Job definitions the flows name (ComputeUnit.batch_job_definitions) ------------------
# Terraform registers them, so what runs is reviewed with the rest of the unit; a flow looks
# the name up (tasks/compute/batch.py check_job_definition) and overrides only the node count,
# command and environment at submission.

resource "aws_batch_job_definition" "this" {
  for_each = {
    simulation = {
      image = var.images.simulation
      resources = [
        { type = "VCPU", value = tostring(var.simulation_node.vcpus) },
        { type = "MEMORY", value = tostring(var.simulation_node.memory_mib) },
      ]
    }
    training = {
      image = var.images.training
      resources = [
        { type = "VCPU", value = tostring(var.training_node.vcpus) },
        { type = "MEMORY", value = tostring(var.training_node.memory_mib) },
        { type = "GPU", value = tostring(var.training_node.gpus) },
      ]
    }
  }

  name                  = "${local.prefix}-${each.key}"
  type                  = "multinode"
  propagate_tags        = true
  platform_capabilities = ["EC2"]

  retry_strategy {
    attempts = 2
    evaluate_on_exit {
      on_status_reason = "Host EC2*"
      action           = "RETRY"
    }
    evaluate_on_exit {
      on_reason = "*"
      action    = "EXIT"
    }
  }

  node_properties = jsonencode({
    numNodes = var.default_node_count
    mainNode = 0
    nodeRangeProperties = [{
      targetNodes = "0:"
      container = {
        image                  = each.value.image
        resourceRequirements   = each.value.resources
        jobRoleArn             = var.job_role_arn
        executionRoleArn       = var.execution_role_arn
        secrets                = local.secrets
        volumes                = [local.efs_volume]
        mountPoints            = [local.efs_mount]
        readonlyRootFilesystem = false
        privileged             = false
        logConfiguration = {
          logDriver = "awslogs"
          options = {
            awslogs-group         = var.log_group
            awslogs-stream-prefix = "batch-${each.key}"
          }
        }
      }
    }]
  })
}
