output "ecs_events_queue" {
  description = "Name of the SQS queue of ECS task state changes (prefect-aws's observer)."
  value       = aws_sqs_queue.ecs_events.name
}

output "ecs_events_queue_arn" {
  description = "ARN of that queue."
  value       = aws_sqs_queue.ecs_events.arn
}

output "prefect_api_url_secret_arn" {
  description = "Secrets Manager secret holding PREFECT_API_URL (the work pools' prefect_api_url_secret_arn)."
  value       = aws_secretsmanager_secret.prefect["api-url"].arn
}

output "prefect_api_key_secret_arn" {
  description = "Secrets Manager secret holding PREFECT_API_KEY, or null without a key."
  value       = try(aws_secretsmanager_secret.prefect["api-key"].arn, null)
}

output "secrets" {
  description = "Environment variable -> secret ARN of the Prefect API settings, for job definitions."
  value       = { for s in local.prefect_secrets : s.name => s.valueFrom }
}

output "security_group_id" {
  description = "Security group of the worker services."
  value       = aws_security_group.worker.id
}

output "services" {
  description = "ECS service name per work pool."
  value       = { for k, s in aws_ecs_service.worker : k => s.name }
}
