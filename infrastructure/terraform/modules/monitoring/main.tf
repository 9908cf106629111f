data "aws_caller_identity" "current" {}

locals {
  prefix = "sciflow-${var.name}"
  # Provider default_tags put sciflow:unit=<name> on every resource of the unit; Cost
  # Explorer names user tags user:<key>.
  unit_cost_tag = "user:sciflow:unit$${var.name}"
}

resource "aws_sns_topic" "alarms" {
  name              = "${local.prefix}-alarms"
  kms_master_key_id = var.kms_key_arn
}

data "aws_iam_policy_document" "alarms" {
  statement {
    sid     = "AlarmSourcesPublish"
    actions = ["sns:Publish"]
    principals {
      type        = "Service"
      identifiers = ["budgets.amazonaws.com", "events.amazonaws.com", "cloudwatch.amazonaws.com"]
    }
    resources = [aws_sns_topic.alarms.arn]
    condition {
      test     = "StringEquals"
      variable = "aws:SourceAccount"
      values   = [data.aws_caller_identity.current.account_id]
    }
  }
}

resource "aws_sns_topic_policy" "alarms" {
  arn    = aws_sns_topic.alarms.arn
  policy = data.aws_iam_policy_document.alarms.json
}

resource "aws_sns_topic_subscription" "email" {
  for_each  = toset(var.alarm_emails)
  topic_arn = aws_sns_topic.alarms.arn
  protocol  = "email"
  endpoint  = each.key
}

# --- Spend: the unit's AWS Budget ------------------------------------------------------------
# sciflow reads this budget (by its name, the output budget_name) before starting work on the
# unit; each notification also mails the alarm topic.

resource "aws_ce_cost_allocation_tag" "unit" {
  count   = var.activate_cost_allocation_tag ? 1 : 0
  tag_key = "sciflow:unit"
  status  = "Active"
}

resource "aws_budgets_budget" "unit" {
  name         = local.prefix
  budget_type  = "COST"
  limit_amount = format("%.2f", var.budget_usd)
  limit_unit   = "USD"
  time_unit    = "MONTHLY"

  cost_filter {
    name   = "TagKeyValue"
    values = [local.unit_cost_tag]
  }

  dynamic "notification" {
    for_each = {
      actual-80      = { type = "ACTUAL", threshold = 80 }
      actual-100     = { type = "ACTUAL", threshold = 100 }
      forecasted-100 = { type = "FORECASTED", threshold = 100 }
    }
    content {
      comparison_operator       = "GREATER_THAN"
      threshold                 = notification.value.threshold
      threshold_type            = "PERCENTAGE"
      notification_type         = notification.value.type
      subscriber_sns_topic_arns = [aws_sns_topic.alarms.arn]
    }
  }

  depends_on = [aws_sns_topic_policy.alarms]
}

# --- Failed work: Batch jobs and ECS tasks of the unit --------------------------------------

resource "aws_cloudwatch_event_rule" "failed" {
  for_each = {
    batch-job-failed = {
      description = "Batch jobs of the sciflow unit ${var.name} that failed"
      pattern = {
        source        = ["aws.batch"]
        "detail-type" = ["Batch Job State Change"]
        detail        = { status = ["FAILED"], jobQueue = [var.batch_job_queue_arn] }
      }
    }
    ecs-task-failed = {
      description = "ECS tasks of the sciflow unit ${var.name} that stopped with a non-zero exit code"
      pattern = {
        source        = ["aws.ecs"]
        "detail-type" = ["ECS Task State Change"]
        detail = {
          clusterArn = [var.ecs_cluster_arn]
          lastStatus = ["STOPPED"]
          containers = { exitCode = [{ "anything-but" = 0 }] }
        }
      }
    }
  }

  name          = "${local.prefix}-${each.key}"
  description   = each.value.description
  event_pattern = jsonencode(each.value.pattern)
}

resource "aws_cloudwatch_event_target" "failed" {
  for_each = aws_cloudwatch_event_rule.failed
  rule     = each.value.name
  arn      = aws_sns_topic.alarms.arn
}

resource "aws_cloudwatch_metric_alarm" "failed" {
  for_each = aws_cloudwatch_event_rule.failed

  alarm_name          = each.value.name
  alarm_description   = "${each.value.description}: ${var.failures_per_hour_alarm} or more in an hour"
  namespace           = "AWS/Events"
  metric_name         = "TriggeredRules"
  dimensions          = { RuleName = each.value.name }
  statistic           = "Sum"
  period              = 3600
  evaluation_periods  = 1
  threshold           = var.failures_per_hour_alarm
  comparison_operator = "GreaterThanOrEqualToThreshold"
  treat_missing_data  = "notBreaching"
  alarm_actions       = [aws_sns_topic.alarms.arn]
  ok_actions          = [aws_sns_topic.alarms.arn]
}
