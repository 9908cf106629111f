output "budget_name" {
  description = "Name of the unit's AWS Budget (sciflow-<name>)."
  value       = aws_budgets_budget.unit.name
}

output "budget_usd" {
  description = "The budget's monthly limit in USD."
  value       = var.budget_usd
}

output "alarm_topic_arn" {
  description = "SNS topic of the unit's alarms and budget notifications."
  value       = aws_sns_topic.alarms.arn
}
