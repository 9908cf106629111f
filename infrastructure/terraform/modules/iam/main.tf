data "aws_caller_identity" "current" {}

data "aws_partition" "current" {}

data "aws_region" "current" {}

locals {
  partition = data.aws_partition.current.partition
  region    = data.aws_region.current.name
  account   = data.aws_caller_identity.current.account_id
  prefix    = "sciflow-${var.name}"
  arn       = "${local.partition}:%s:${local.region}:${local.account}"

  cluster_name = element(split("/", var.ecs_cluster_arn), 1)
  # Task definition families and Batch job definitions sciflow registers are all sciflow-*
  # (tasks/training/ecs.py, tasks/compute/batch.py, the work pools' families).
  task_definitions = "arn:${format(local.arn, "ecs")}:task-definition/sciflow-*"
  tasks            = "arn:${format(local.arn, "ecs")}:task/${local.cluster_name}/*"
  job_definitions  = "arn:${format(local.arn, "batch")}:job-definition/sciflow-*"
  jobs             = "arn:${format(local.arn, "batch")}:job/*"
  services         = "arn:${format(local.arn, "servicediscovery")}:service/*"
  role_arns        = "arn:${local.partition}:iam::${local.account}:role/${local.prefix}-*"
  unit_tag         = "aws:ResourceTag/sciflow:unit"

  cross_account = var.mode == "user"
}

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

# --- data: the unit's bucket and key -------------------------------------------------------

data "aws_iam_policy_document" "data" {
  statement {
    sid       = "ListTheUnitsBucket"
    actions   = ["s3:ListBucket", "s3:ListBucketVersions", "s3:GetBucketLocation", "s3:GetBucketObjectLockConfiguration", "s3:ListBucketMultipartUploads"]
    resources = [var.bucket_arn]
  }

  statement {
    sid = "ReadWriteRunObjects"
    actions = [
      "s3:AbortMultipartUpload",
      "s3:DeleteObject",
      "s3:DeleteObjectVersion",
      "s3:GetObject",
      "s3:GetObjectTagging",
      "s3:GetObjectVersion",
      "s3:ListMultipartUploadParts",
      "s3:PutObject",
      "s3:PutObjectRetention",
      "s3:PutObjectTagging",
    ]
    resources = ["${var.bucket_arn}/*"]
  }

  statement {
    sid       = "MountTheSharedFileSystem"
    actions   = ["elasticfilesystem:ClientMount", "elasticfilesystem:ClientWrite"]
    resources = [var.efs_file_system_arn]
  }

  statement {
    sid       = "UseTheUnitsKey"
    actions   = ["kms:Decrypt", "kms:Encrypt", "kms:GenerateDataKey", "kms:DescribeKey"]
    resources = [var.kms_key_arn]
  }
}

resource "aws_iam_policy" "data" {
  name        = "${local.prefix}-data"
  description = "Read and write the sciflow unit ${var.name}'s bucket"
  policy      = data.aws_iam_policy_document.data.json
}

# --- launch: ECS tasks and Batch jobs of the unit -------------------------------------------

data "aws_iam_policy_document" "launch" {
  statement {
    sid       = "RunSciflowTasksInTheUnitsCluster"
    actions   = ["ecs:RunTask", "ecs:StartTask"]
    resources = [local.task_definitions]
    condition {
      test     = "ArnEquals"
      variable = "ecs:cluster"
      values   = [var.ecs_cluster_arn]
    }
  }

  statement {
    sid       = "FollowAndStopTheUnitsTasks"
    actions   = ["ecs:DescribeTasks", "ecs:StopTask", "ecs:TagResource"]
    resources = [local.tasks, local.task_definitions]
  }

  statement {
    sid       = "ListTheUnitsTasks"
    actions   = ["ecs:ListTasks"]
    resources = ["*"]
    condition {
      test     = "ArnEquals"
      variable = "ecs:cluster"
      values   = [var.ecs_cluster_arn]
    }
  }

  statement {
    sid = "TaskDefinitions"
    # Registering, describing and deregistering task definitions has no resource-level
    # permissions; the families sciflow uses are sciflow-*.
    actions   = ["ecs:RegisterTaskDefinition", "ecs:DescribeTaskDefinition", "ecs:DeregisterTaskDefinition"]
    resources = ["*"]
  }

  statement {
    sid       = "PassTheUnitsRolesToTasks"
    actions   = ["iam:PassRole"]
    resources = [local.role_arns, var.execution_role_arn]
    condition {
      test     = "StringEquals"
      variable = "iam:PassedToService"
      values   = ["ecs-tasks.amazonaws.com", "batch.amazonaws.com"]
    }
  }

  statement {
    sid       = "SubmitToTheUnitsQueue"
    actions   = ["batch:SubmitJob"]
    resources = [var.batch_job_queue_arn, local.job_definitions]
  }

  statement {
    sid       = "RegisterSciflowJobDefinitions"
    actions   = ["batch:RegisterJobDefinition", "batch:TagResource"]
    resources = [local.job_definitions, local.jobs]
  }

  statement {
    sid       = "StopTheUnitsJobs"
    actions   = ["batch:TerminateJob", "batch:CancelJob"]
    resources = [local.jobs]
    condition {
      test     = "StringEquals"
      variable = local.unit_tag
      values   = [var.name]
    }
  }

  statement {
    sid = "FollowJobs"
    # Describe and list calls of Batch and EC2 have no resource-level permissions.
    actions = [
      "batch:DescribeJobDefinitions",
      "batch:DescribeJobQueues",
      "batch:DescribeJobs",
      "batch:ListJobs",
      "ec2:DescribeNetworkInterfaces",
      "ec2:DescribeSecurityGroups",
      "ec2:DescribeSubnets",
      "ec2:DescribeVpcs",
    ]
    resources = ["*"]
  }

  statement {
    sid       = "ReadTheUnitsLogs"
    actions   = ["logs:GetLogEvents", "logs:FilterLogEvents", "logs:DescribeLogStreams"]
    resources = [var.log_group_arn, "${var.log_group_arn}:*"]
  }
}

resource "aws_iam_policy" "launch" {
  name        = "${local.prefix}-launch"
  description = "Start, follow and stop the sciflow unit ${var.name}'s ECS tasks and Batch jobs"
  policy      = data.aws_iam_policy_document.launch.json
}

# --- discovery: parameter servers in the unit's Cloud Map namespace --------------------------
# The namespace is Terraform's (ecs module); runs only add and remove services in it, so no
# role needs to create namespaces or Route 53 zones.

data "aws_iam_policy_document" "discovery" {
  statement {
    sid       = "CreateServicesInTheUnitsNamespace"
    actions   = ["servicediscovery:CreateService", "servicediscovery:TagResource"]
    resources = [var.cloud_map_namespace_arn, local.services]
    condition {
      test     = "ArnEquals"
      variable = "servicediscovery:NamespaceArn"
      values   = [var.cloud_map_namespace_arn]
    }
  }

  statement {
    sid = "RegisterTheServer"
    actions = [
      "servicediscovery:DeleteService",
      "servicediscovery:DeregisterInstance",
      "servicediscovery:GetService",
      "servicediscovery:ListInstances",
      "servicediscovery:RegisterInstance",
    ]
    resources = [local.services]
    condition {
      test     = "ArnEquals"
      variable = "servicediscovery:NamespaceArn"
      values   = [var.cloud_map_namespace_arn]
    }
  }

  statement {
    sid = "FindTheNamespace"
    # No resource-level permissions.
    actions   = ["servicediscovery:ListNamespaces", "servicediscovery:ListServices", "servicediscovery:GetOperation"]
    resources = ["*"]
  }

  statement {
    sid       = "WriteTheServersRecord"
    actions   = ["route53:ChangeResourceRecordSets", "route53:GetHostedZone", "route53:ListResourceRecordSets"]
    resources = ["arn:${local.partition}:route53:::hostedzone/${var.cloud_map_hosted_zone_id}"]
  }
}

resource "aws_iam_policy" "discovery" {
  name        = "${local.prefix}-discovery"
  description = "Register parameter servers in the sciflow unit ${var.name}'s Cloud Map namespace"
  policy      = data.aws_iam_policy_document.discovery.json
}

# --- cleanup: remove what a run left, found by the unit's tags -------------------------------

data "aws_iam_policy_document" "cleanup" {
  statement {
    sid       = "StopLeftoverTasks"
    actions   = ["ecs:StopTask"]
    resources = [local.tasks]
    condition {
      test     = "StringEquals"
      variable = local.unit_tag
      values   = [var.name]
    }
  }

  statement {
    sid       = "FindLeftoverTasks"
    actions   = ["ecs:DescribeTasks"]
    resources = [local.tasks]
  }

  statement {
    sid       = "TerminateLeftoverJobs"
    actions   = ["batch:TerminateJob", "batch:CancelJob"]
    resources = [local.jobs]
    condition {
      test     = "StringEquals"
      variable = local.unit_tag
      values   = [var.name]
    }
  }

  statement {
    sid       = "RemoveLeftoverServices"
    actions   = ["servicediscovery:DeleteService", "servicediscovery:DeregisterInstance", "servicediscovery:ListInstances"]
    resources = [local.services]
    condition {
      test     = "ArnEquals"
      variable = "servicediscovery:NamespaceArn"
      values   = [var.cloud_map_namespace_arn]
    }
  }

  statement {
    sid = "FindLeftovers"
    # Tag lookups and these describes have no resource-level permissions.
    actions   = ["tag:GetResources", "batch:DescribeJobs", "batch:ListJobs", "servicediscovery:ListServices"]
    resources = ["*"]
  }
}

resource "aws_iam_policy" "cleanup" {
  name        = "${local.prefix}-cleanup"
  description = "Remove what the sciflow unit ${var.name}'s runs left behind"
  policy      = data.aws_iam_policy_document.cleanup.json
}

# --- observe: prefect-aws's ECS observer reads task state changes -----------------------------

data "aws_iam_policy_document" "observe" {
  statement {
    sid       = "ReadTaskStateChanges"
    actions   = ["sqs:ReceiveMessage", "sqs:DeleteMessage", "sqs:GetQueueUrl", "sqs:GetQueueAttributes"]
    resources = [var.ecs_events_queue_arn]
  }
}

resource "aws_iam_policy" "observe" {
  name        = "${local.prefix}-observe"
  description = "Read the sciflow unit ${var.name}'s ECS task state changes"
  policy      = data.aws_iam_policy_document.observe.json
}

# --- roles -----------------------------------------------------------------------------------

locals {
  policies = {
    data      = aws_iam_policy.data.arn
    launch    = aws_iam_policy.launch.arn
    discovery = aws_iam_policy.discovery.arn
    cleanup   = aws_iam_policy.cleanup.arn
    observe   = aws_iam_policy.observe.arn
  }
  # Which policies each role holds.
  grants = {
    worker   = ["launch", "observe"]
    flow-run = ["data", "launch", "discovery"]
    cleanup  = ["data", "cleanup"]
  }
  attachments = merge(
    { for pair in flatten([for role, names in local.grants : [for p in names : { role = role, policy = p }]]) : "${pair.role}/${pair.policy}" => pair },
    local.cross_account ? { for p in keys(local.policies) : "cross-account/${p}" => { role = "cross-account", policy = p } } : {},
  )
}

resource "aws_iam_role" "task" {
  for_each = local.grants

  name               = "${local.prefix}-${each.key}"
  description        = "sciflow unit ${var.name}: ${each.key} tasks"
  assume_role_policy = data.aws_iam_policy_document.ecs_tasks_assume.json
}

# Mode 2: sciflow enters the user's account through this role, and only with the external id
# the unit carries (ComputeUnit.external_id), so no other customer of the operator can.
data "aws_iam_policy_document" "cross_account_assume" {
  count = local.cross_account ? 1 : 0

  statement {
    actions = ["sts:AssumeRole"]
    principals {
      type        = "AWS"
      identifiers = var.trusted_principal_arns
    }
    condition {
      test     = "StringEquals"
      variable = "sts:ExternalId"
      values   = [var.external_id == null ? "" : var.external_id]
    }
  }
}

resource "aws_iam_role" "cross_account" {
  count = local.cross_account ? 1 : 0

  name                 = "${local.prefix}-cross-account"
  description          = "sciflow operator access to unit ${var.name}; requires the unit's external id"
  assume_role_policy   = data.aws_iam_policy_document.cross_account_assume[0].json
  max_session_duration = 3600

  lifecycle {
    precondition {
      condition     = length(var.trusted_principal_arns) > 0 && var.external_id != null
      error_message = "mode user needs trusted_principal_arns and external_id for the cross-account role."
    }
  }
}

locals {
  role_names = merge(
    { for key, role in aws_iam_role.task : key => role.name },
    { for role in aws_iam_role.cross_account : "cross-account" => role.name },
  )
}

resource "aws_iam_role_policy_attachment" "this" {
  for_each = local.attachments

  role       = local.role_names[each.value.role]
  policy_arn = local.policies[each.value.policy]
}
