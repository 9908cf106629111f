output "job_queue" {
  description = "Name of the multi-node job queue."
  value       = aws_batch_job_queue.this.name
}

output "job_queue_arn" {
  description = "ARN of the multi-node job queue."
  value       = aws_batch_job_queue.this.arn
}

output "job_definitions" {
  description = "Job definition name per runtime: simulation, training."
  value       = { for k, d in aws_batch_job_definition.this : k => d.name }
}

output "job_definition_arns" {
  description = "Job definition ARN (with revision) per runtime."
  value       = { for k, d in aws_batch_job_definition.this : k => d.arn }
}

output "security_group_id" {
  description = "Security group of the Batch nodes."
  value       = aws_security_group.nodes.id
}

output "placement_group" {
  description = "Cluster placement group of the compute environments."
  value       = aws_placement_group.this.name
}

output "compute_environment_arns" {
  description = "Compute environment ARN per kind: cpu, gpu."
  value       = { for k, c in aws_batch_compute_environment.this : k => c.arn }
}
