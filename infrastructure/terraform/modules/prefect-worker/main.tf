data "aws_region" "current" {}

locals {
  prefix = "sciflow-${var.name}"
  # ECS sets these from Secrets Manager; a secret without a value stops the task from starting.
  prefect_secrets = [
    for key, variable in { api-url = "PREFECT_API_URL", api-key = "PREFECT_API_KEY" } :
    { name = variable, valueFrom = aws_secretsmanager_secret.prefect[key].arn }
    if contains(keys(aws_secretsmanager_secret.prefect), key)
  ]

  # The workers' settings: prefect-aws's ECS observer (EcsObserverSqsSettings), Prefect's.
  worker_env = [
    { name = "PREFECT_INTEGRATIONS_AWS_ECS_OBSERVER_SQS_QUEUE_NAME", value = aws_sqs_queue.ecs_events.name },
    { name = "PREFECT_INTEGRATIONS_AWS_ECS_OBSERVER_SQS_QUEUE_REGION", value = data.aws_region.current.name },
    # The root file system is read-only; Prefect keeps its home on the task's scratch volume.
    { name = "PREFECT_HOME", value = "/scratch/prefect" },
    # Without it a worker lets a run cancelled while it is being submitted start anyway.
    { name = "PREFECT_WORKER_ENABLE_CANCELLATION", value = "true" },
  ]
}

# --- The Prefect API URL and key, as secrets (values are put by the operator) --------------

resource "aws_secretsmanager_secret" "prefect" {
  #checkov:skip=CKV2_AWS_57:a Prefect API URL or key is rotated in Prefect, not by a Lambda here
  for_each = toset(var.prefect_api_key ? ["api-url", "api-key"] : ["api-url"])

  name        = "${local.prefix}/prefect-${each.key}"
  description = "Prefect ${each.key} for the sciflow unit ${var.name}; set with put-secret-value"
  kms_key_id  = var.kms_key_arn
}

data "aws_iam_policy_document" "read_secrets" {
  statement {
    sid       = "ReadThePrefectApiSecrets"
    actions   = ["secretsmanager:GetSecretValue"]
    resources = [for s in aws_secretsmanager_secret.prefect : s.arn]
  }

  statement {
    sid       = "DecryptThem"
    actions   = ["kms:Decrypt"]
    resources = [var.kms_key_arn]
    condition {
      test     = "StringEquals"
      variable = "kms:ViaService"
      values   = ["secretsmanager.${data.aws_region.current.name}.amazonaws.com"]
    }
  }
}

resource "aws_iam_role_policy" "read_secrets" {
  name   = "read-prefect-api-secrets"
  role   = var.execution_role_name
  policy = data.aws_iam_policy_document.read_secrets.json
}

# --- ECS task state changes for prefect-aws's observer -------------------------------------
# The ECS worker's observer reads these to mark flow runs whose task stopped unexpectedly as
# crashed.

resource "aws_sqs_queue" "ecs_events" {
  name                      = "${local.prefix}-ecs-task-events"
  message_retention_seconds = 86400
  receive_wait_time_seconds = 20
  sqs_managed_sse_enabled   = true
}

resource "aws_cloudwatch_event_rule" "ecs_events" {
  name        = "${local.prefix}-ecs-task-state"
  description = "ECS task state changes in the sciflow unit ${var.name}'s cluster"
  event_pattern = jsonencode({
    source        = ["aws.ecs"]
    "detail-type" = ["ECS Task State Change"]
    detail        = { clusterArn = [var.ecs_cluster_arn] }
  })
}

resource "aws_cloudwatch_event_target" "ecs_events" {
  rule = aws_cloudwatch_event_rule.ecs_events.name
  arn  = aws_sqs_queue.ecs_events.arn
}

data "aws_iam_policy_document" "ecs_events" {
  statement {
    sid     = "EventBridgeSendsTaskStateChanges"
    actions = ["sqs:SendMessage"]
    principals {
      type        = "Service"
      identifiers = ["events.amazonaws.com"]
    }
    resources = [aws_sqs_queue.ecs_events.arn]
    condition {
      test     = "ArnEquals"
      variable = "aws:SourceArn"
      values   = [aws_cloudwatch_event_rule.ecs_events.arn]
    }
  }
}

resource "aws_sqs_queue_policy" "ecs_events" {
  queue_url = aws_sqs_queue.ecs_events.id
  policy    = data.aws_iam_policy_document.ecs_events.json
}

# --- The workers: one Fargate service per work pool -----------------------------------------

resource "aws_security_group" "worker" {
  name        = "${var.name}-prefect-worker"
  description = "Prefect workers: no inbound; the Prefect API and AWS APIs out"
  vpc_id      = var.vpc_id

  tags = { Name = "${var.name}-prefect-worker" }
}

resource "aws_vpc_security_group_egress_rule" "worker_https" {
  security_group_id = aws_security_group.worker.id
  description       = "HTTPS to AWS APIs"
  cidr_ipv4         = "0.0.0.0/0"
  ip_protocol       = "tcp"
  from_port         = 443
  to_port           = 443
}

resource "aws_vpc_security_group_egress_rule" "worker_prefect_api" {
  count             = var.prefect_api_port == 443 ? 0 : 1
  security_group_id = aws_security_group.worker.id
  description       = "The Prefect API"
  cidr_ipv4         = "0.0.0.0/0"
  ip_protocol       = "tcp"
  from_port         = var.prefect_api_port
  to_port           = var.prefect_api_port
}

resource "aws_vpc_security_group_egress_rule" "worker_dns" {
  security_group_id = aws_security_group.worker.id
  description       = "DNS to the VPC resolver"
  cidr_ipv4         = var.vpc_cidr_block
  ip_protocol       = "udp"
  from_port         = 53
  to_port           = 53
}

resource "aws_ecs_task_definition" "worker" {
  for_each = var.work_pools

  family                   = "${local.prefix}-worker-${each.key}"
  requires_compatibilities = ["FARGATE"]
  network_mode             = "awsvpc"
  cpu                      = var.cpu
  memory                   = var.memory_mib
  task_role_arn            = var.task_role_arn
  execution_role_arn       = var.execution_role_arn

  volume {
    name = "scratch"
  }

  container_definitions = jsonencode([{
    name                   = "worker"
    image                  = var.image
    essential              = true
    readonlyRootFilesystem = true
    command                = ["prefect", "worker", "start", "--pool", each.key, "--type", each.value, "--with-healthcheck"]
    environment            = local.worker_env
    secrets                = local.prefect_secrets
    mountPoints            = [{ sourceVolume = "scratch", containerPath = "/scratch", readOnly = false }]
    healthCheck = {
      # `prefect worker start --with-healthcheck` answers on 8080 while its loops run.
      command     = ["CMD", "python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8080/health', timeout=5)"]
      interval    = 30
      timeout     = 10
      retries     = 3
      startPeriod = 60
    }
    logConfiguration = {
      logDriver = "awslogs"
      options = {
        awslogs-group         = var.log_group
        awslogs-region        = data.aws_region.current.name
        awslogs-stream-prefix = "worker-${each.key}"
      }
    }
  }])
}

resource "aws_ecs_service" "worker" {
  for_each = var.work_pools

  name            = "${local.prefix}-worker-${each.key}"
  cluster         = var.ecs_cluster_arn
  task_definition = aws_ecs_task_definition.worker[each.key].arn
  desired_count   = 1
  launch_type     = "FARGATE"
  propagate_tags  = "SERVICE"

  network_configuration {
    subnets          = var.subnet_ids
    security_groups  = [aws_security_group.worker.id]
    assign_public_ip = false
  }

  deployment_circuit_breaker {
    enable   = true
    rollback = true
  }
}
