output "security_group_id" {
  description = "Security group of Dask schedulers, workers and clients, and of parameter-server training."
  value       = aws_security_group.this.id
}
