locals {
  mode = "managed"
  unit_tags = merge(var.tags, {
    "sciflow:unit" = var.unit_name
    "sciflow:mode" = local.mode
  })
  # Work pool per size class (ComputeUnit.work_pools) and the worker type that serves it.
  work_pools = {
    small     = "${var.unit_name}-small"
    large     = "${var.unit_name}-large"
    multinode = "${var.unit_name}-multinode"
    gpu       = "${var.unit_name}-gpu"
  }
  worker_types = {
    small     = "sciflow-ecs"
    large     = "sciflow-ecs"
    multinode = "aws-batch"
    gpu       = "sciflow-ecs"
  }
  images = { for k, url in module.ecr.repository_urls : k => "${url}:${var.image_tag}" }
}

module "network" {
  source = "../../modules/network"

  name               = var.unit_name
  cidr_block         = var.vpc_cidr_block
  availability_zones = var.availability_zones
  nat_gateway        = var.nat_gateway
  kms_key_arn        = module.storage.kms_key_arn
}

module "storage" {
  source = "../../modules/storage"

  name           = var.unit_name
  bucket_name    = var.bucket_name
  vpc_id         = module.network.vpc_id
  vpc_cidr_block = module.network.vpc_cidr_block
  subnet_ids     = module.network.private_subnet_ids
  run_role_arns  = module.iam.run_role_arns
  fsx_enabled    = var.fsx_enabled
}

module "ecr" {
  source = "../../modules/ecr"

  name        = var.unit_name
  kms_key_arn = module.storage.kms_key_arn
}

module "ecs" {
  source = "../../modules/ecs"

  name                = var.unit_name
  vpc_id              = module.network.vpc_id
  vpc_cidr_block      = module.network.vpc_cidr_block
  subnet_ids          = module.network.private_subnet_ids
  kms_key_arn         = module.storage.kms_key_arn
  ecr_repository_arns = values(module.ecr.repository_arns)
  gpu_enabled         = var.gpu_enabled
}

module "dask" {
  source = "../../modules/dask"

  name           = var.unit_name
  vpc_id         = module.network.vpc_id
  vpc_cidr_block = module.network.vpc_cidr_block
}

module "batch" {
  source = "../../modules/batch"

  name                = var.unit_name
  vpc_id              = module.network.vpc_id
  vpc_cidr_block      = module.network.vpc_cidr_block
  subnet_id           = module.network.private_subnet_ids[0]
  job_role_arn        = module.iam.flow_run_role_arn
  execution_role_arn  = module.ecs.execution_role_arn
  images              = { simulation = local.images["mpi"], training = local.images["gpu"] }
  efs_file_system_id  = module.storage.efs_file_system_id
  efs_access_point_id = module.storage.efs_access_point_id
  log_group           = module.ecs.log_group
  log_group_arn       = module.ecs.log_group_arn
  ecr_repository_arns = values(module.ecr.repository_arns)
  secrets             = module.prefect_worker.secrets
}

module "iam" {
  source = "../../modules/iam"

  name                     = var.unit_name
  mode                     = local.mode
  bucket_arn               = module.storage.bucket_arn
  efs_file_system_arn      = module.storage.efs_file_system_arn
  kms_key_arn              = module.storage.kms_key_arn
  ecs_cluster_arn          = module.ecs.cluster_arn
  execution_role_arn       = module.ecs.execution_role_arn
  log_group_arn            = module.ecs.log_group_arn
  batch_job_queue_arn      = module.batch.job_queue_arn
  cloud_map_namespace_arn  = module.ecs.cloud_map_namespace_arn
  cloud_map_hosted_zone_id = module.ecs.cloud_map_hosted_zone_id
  ecs_events_queue_arn     = module.prefect_worker.ecs_events_queue_arn
}

module "prefect_worker" {
  source = "../../modules/prefect-worker"

  name                = var.unit_name
  work_pools          = { for size, pool in local.work_pools : pool => local.worker_types[size] }
  image               = local.images["flows"]
  ecs_cluster_arn     = module.ecs.cluster_arn
  vpc_id              = module.network.vpc_id
  vpc_cidr_block      = module.network.vpc_cidr_block
  subnet_ids          = module.network.private_subnet_ids
  task_role_arn       = module.iam.worker_role_arn
  execution_role_arn  = module.ecs.execution_role_arn
  execution_role_name = module.ecs.execution_role_name
  kms_key_arn         = module.storage.kms_key_arn
  log_group           = module.ecs.log_group
  prefect_api_key     = var.prefect_api_key
}

module "monitoring" {
  source = "../../modules/monitoring"

  name                = var.unit_name
  budget_usd          = var.budget_usd
  alarm_emails        = var.alarm_emails
  kms_key_arn         = module.storage.kms_key_arn
  batch_job_queue_arn = module.batch.job_queue_arn
  ecs_cluster_arn     = module.ecs.cluster_arn
}
