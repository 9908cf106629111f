output "cluster_arn" {
  description = "ECS cluster ARN."
  value       = aws_ecs_cluster.this.arn
}

output "cluster_name" {
  description = "ECS cluster name (sciflow-<name>)."
  value       = aws_ecs_cluster.this.name
}

output "execution_role_arn" {
  description = "Task execution role: pulls the unit's images, writes its logs."
  value       = aws_iam_role.execution.arn
}

output "execution_role_name" {
  description = "Task execution role name (other modules attach secret reads to it)."
  value       = aws_iam_role.execution.name
}

output "log_group" {
  description = "The unit's CloudWatch log group."
  value       = aws_cloudwatch_log_group.this.name
}

output "log_group_arn" {
  description = "The unit's CloudWatch log group ARN."
  value       = aws_cloudwatch_log_group.this.arn
}

output "gpu_capacity_provider" {
  description = "ECS capacity provider of EC2 GPU hosts, or null without GPU capacity."
  value       = one(aws_ecs_capacity_provider.gpu[*].name)
}

output "cloud_map_namespace" {
  description = "Cloud Map private DNS namespace name."
  value       = aws_service_discovery_private_dns_namespace.this.name
}

output "cloud_map_namespace_arn" {
  description = "Cloud Map namespace ARN (flow runs create services in it)."
  value       = aws_service_discovery_private_dns_namespace.this.arn
}

output "cloud_map_namespace_id" {
  description = "Cloud Map namespace id."
  value       = aws_service_discovery_private_dns_namespace.this.id
}

output "cloud_map_hosted_zone_id" {
  description = "Route 53 private hosted zone Cloud Map made for the namespace."
  value       = aws_service_discovery_private_dns_namespace.this.hosted_zone
}
