output "worker_role_arn" {
  description = "Task role of the Prefect workers (start and follow the unit's tasks and jobs)."
  value       = aws_iam_role.task["worker"].arn
}

output "flow_run_role_arn" {
  description = "Task role of flow runs, Dask clusters, parameter-server training and Batch jobs."
  value       = aws_iam_role.task["flow-run"].arn
}

output "cleanup_role_arn" {
  description = "Task role of the secure cleanup flow."
  value       = aws_iam_role.task["cleanup"].arn
}

output "cross_account_role_arn" {
  description = "Mode 2: the role sciflow assumes with the external id; null in Mode 1."
  value       = one(aws_iam_role.cross_account[*].arn)
}

output "run_role_arns" {
  description = "Roles runs act as: the bucket policy keeps them from removing audit records."
  value = concat(
    [aws_iam_role.task["flow-run"].arn],
    aws_iam_role.cross_account[*].arn,
  )
}
