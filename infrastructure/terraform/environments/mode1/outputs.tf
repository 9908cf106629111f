# Named as ComputeUnit.from_terraform_output reads them (infrastructure/README.md).

output "unit_name" {
  description = "Compute unit name."
  value       = var.unit_name
}

output "mode" {
  description = "managed (Mode 1)."
  value       = local.mode
}

output "region" {
  description = "AWS region."
  value       = var.region
}

output "storage_root" {
  description = "s3://bucket every run writes under."
  value       = module.storage.storage_root
}

output "work_pools" {
  description = "Work pool per size class: small, large, multinode, gpu."
  value       = local.work_pools
}

output "role_arn" {
  description = "Role to assume: none in Mode 1 (sciflow runs with the account's own credentials)."
  value       = null
}

output "task_role_arn" {
  description = "Role of flow runs, Dask clusters, training tasks and Batch jobs."
  value       = module.iam.flow_run_role_arn
}

output "execution_role_arn" {
  description = "ECS task execution role."
  value       = module.ecs.execution_role_arn
}

output "batch_job_queue" {
  description = "AWS Batch queue for multi-node jobs."
  value       = module.batch.job_queue
}

output "batch_job_definitions" {
  description = "Batch job definition per runtime (simulation, training), registered by Terraform."
  value       = module.batch.job_definitions
}

output "efs_file_system_id" {
  description = "EFS shared by multi-node jobs."
  value       = module.storage.efs_file_system_id
}

output "fsx_file_system_id" {
  description = "FSx for Lustre file system of the model registry, or null."
  value       = module.storage.fsx_file_system_id
}

output "fsx_mount" {
  description = "Where nodes mount FSx, or null."
  value       = module.storage.fsx_mount
}

output "dask_image" {
  description = "Image of Dask schedulers and workers (the flows image)."
  value       = local.images["flows"]
}

output "subnets" {
  description = "Private subnets of Dask clusters and training tasks."
  value       = module.network.private_subnet_ids
}

output "public_subnets" {
  description = "Whether `subnets` route to an internet gateway: never."
  value       = false
}

output "security_groups" {
  description = "Security group of Dask clusters and parameter-server training."
  value       = [module.dask.security_group_id]
}

output "ecs_cluster_arn" {
  description = "The unit's ECS cluster."
  value       = module.ecs.cluster_arn
}

output "log_group" {
  description = "The unit's CloudWatch log group."
  value       = module.ecs.log_group
}

output "gpu_capacity_provider" {
  description = "ECS capacity provider of EC2 GPU hosts, or null."
  value       = module.ecs.gpu_capacity_provider
}

output "cloud_map_namespace" {
  description = "Cloud Map private DNS namespace of parameter servers."
  value       = module.ecs.cloud_map_namespace
}

output "ecs_events_queue" {
  description = "SQS queue of ECS task state changes for prefect-aws's observer."
  value       = module.prefect_worker.ecs_events_queue
}

output "ecr_repositories" {
  description = "ECR repository URL per image: flows, mpi, gpu."
  value       = module.ecr.repository_urls
}

output "spending_cap_usd" {
  description = "Most one run may spend, in USD."
  value       = var.spending_cap_usd
}

output "budget_usd" {
  description = "Monthly AWS Budget of the whole unit, in USD."
  value       = module.monitoring.budget_usd
}

output "budget_name" {
  description = "Name of that AWS Budget."
  value       = module.monitoring.budget_name
}

output "tags" {
  description = "The unit's extra tags."
  value       = var.tags
}

output "prefect_api_url_secret_arn" {
  description = "Secret to put the Prefect API URL in (aws secretsmanager put-secret-value)."
  value       = module.prefect_worker.prefect_api_url_secret_arn
}

output "prefect_api_key_secret_arn" {
  description = "Secret to put the Prefect API key in (null with prefect_api_key = false)."
  value       = module.prefect_worker.prefect_api_key_secret_arn
}

output "cleanup_role_arn" {
  description = "Task role of the secure cleanup flow."
  value       = module.iam.cleanup_role_arn
}

output "alarm_topic_arn" {
  description = "SNS topic of failure alarms and budget notifications."
  value       = module.monitoring.alarm_topic_arn
}
