# Example: the iam module on its own, with placeholder ids of what other modules make.
provider "aws" {
  region = "eu-central-1"

  default_tags {
    tags = { "sciflow:unit" = "example" }
  }
}

variable "external_id" {
  description = "External id the cross-account role requires (TF_VAR_external_id)."
  type        = string
  sensitive   = true

  validation {
    condition     = length(var.external_id) >= 16
    error_message = "external_id must be at least 16 characters."
  }
}

module "iam" {
  source = "../.."

  name                     = "example"
  mode                     = "user"
  trusted_principal_arns   = ["arn:aws:iam::444455556666:role/sciflow-operator"]
  external_id              = var.external_id
  bucket_arn               = "arn:aws:s3:::example-sciflow-data"
  efs_file_system_arn      = "arn:aws:elasticfilesystem:eu-central-1:111122223333:file-system/fs-0123456789abcdef0"
  kms_key_arn              = "arn:aws:kms:eu-central-1:111122223333:key/1234abcd-12ab-34cd-56ef-1234567890ab"
  ecs_cluster_arn          = "arn:aws:ecs:eu-central-1:111122223333:cluster/sciflow-example"
  execution_role_arn       = "arn:aws:iam::111122223333:role/sciflow-example-ecs-execution"
  log_group_arn            = "arn:aws:logs:eu-central-1:111122223333:log-group:/sciflow/example"
  batch_job_queue_arn      = "arn:aws:batch:eu-central-1:111122223333:job-queue/sciflow-example-multinode"
  cloud_map_namespace_arn  = "arn:aws:servicediscovery:eu-central-1:111122223333:namespace/ns-0123456789abcdef"
  cloud_map_hosted_zone_id = "Z0123456789ABCDEFGHIJ"
  ecs_events_queue_arn     = "arn:aws:sqs:eu-central-1:111122223333:sciflow-example-ecs-task-events"
}

output "cross_account_role_arn" {
  description = "The role the operator assumes with the external id."
  value       = module.iam.cross_account_role_arn
}
