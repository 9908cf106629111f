variable "name" {
  description = "Compute unit name; roles are named sciflow-<name>-<purpose>."
  type        = string

  validation {
    condition     = can(regex("^[a-z][a-z0-9-]{1,30}[a-z0-9]$", var.name))
    error_message = "name must be 3-32 lowercase letters, digits or dashes, starting with a letter."
  }
}

variable "mode" {
  description = "managed (Mode 1: the team's account) or user (Mode 2: the user's account, entered through a cross-account role)."
  type        = string

  validation {
    condition     = contains(["managed", "user"], var.mode)
    error_message = "mode must be managed or user."
  }
}

variable "trusted_principal_arns" {
  description = "Mode 2: the sciflow operator's IAM roles that may assume the cross-account role (with the external id). Empty in Mode 1."
  type        = list(string)
  default     = []

  validation {
    condition     = alltrue([for a in var.trusted_principal_arns : can(regex("^arn:aws(-cn|-us-gov)?:iam::[0-9]{12}:role/", a))])
    error_message = "trusted_principal_arns must be IAM role ARNs (never an account root or \"*\")."
  }
}

variable "external_id" {
  description = "Mode 2: the external id the cross-account role's trust policy requires (ComputeUnit.external_id). Null in Mode 1."
  type        = string
  default     = null
  sensitive   = true

  validation {
    condition     = var.external_id == null || can(regex("^[A-Za-z0-9+=,.@:/-]{16,1224}$", var.external_id))
    error_message = "external_id must be 16-1224 characters of letters, digits and + = , . @ : / -."
  }
}

variable "bucket_arn" {
  description = "ARN of the run data bucket."
  type        = string

  validation {
    condition     = can(regex("^arn:aws[a-z-]*:s3:::", var.bucket_arn))
    error_message = "bucket_arn must be an S3 bucket ARN."
  }
}

variable "efs_file_system_arn" {
  description = "ARN of the unit's EFS file system (its policy admits IAM principals through the access point; run roles are granted mounting it here)."
  type        = string

  validation {
    condition     = can(regex("^arn:aws[a-z-]*:elasticfilesystem:", var.efs_file_system_arn))
    error_message = "efs_file_system_arn must be an EFS file system ARN."
  }
}

variable "kms_key_arn" {
  description = "ARN of the unit's KMS key (bucket encryption)."
  type        = string

  validation {
    condition     = can(regex("^arn:aws[a-z-]*:kms:", var.kms_key_arn))
    error_message = "kms_key_arn must be a KMS key ARN."
  }
}

variable "ecs_cluster_arn" {
  description = "ARN of the unit's ECS cluster: tasks are started and stopped there only."
  type        = string

  validation {
    condition     = can(regex("^arn:aws[a-z-]*:ecs:", var.ecs_cluster_arn))
    error_message = "ecs_cluster_arn must be an ECS cluster ARN."
  }
}

variable "execution_role_arn" {
  description = "ARN of the ECS task execution role flow runs may pass to the tasks they start."
  type        = string

  validation {
    condition     = can(regex("^arn:aws[a-z-]*:iam::[0-9]{12}:role/", var.execution_role_arn))
    error_message = "execution_role_arn must be an IAM role ARN."
  }
}

variable "log_group_arn" {
  description = "ARN of the unit's log group (workers stream flow-run logs from it)."
  type        = string

  validation {
    condition     = can(regex("^arn:aws[a-z-]*:logs:", var.log_group_arn))
    error_message = "log_group_arn must be a CloudWatch Logs ARN."
  }
}

variable "batch_job_queue_arn" {
  description = "ARN of the unit's Batch job queue."
  type        = string

  validation {
    condition     = can(regex("^arn:aws[a-z-]*:batch:", var.batch_job_queue_arn))
    error_message = "batch_job_queue_arn must be a Batch job queue ARN."
  }
}

variable "cloud_map_namespace_arn" {
  description = "ARN of the Cloud Map namespace parameter servers register in."
  type        = string

  validation {
    condition     = can(regex("^arn:aws[a-z-]*:servicediscovery:", var.cloud_map_namespace_arn))
    error_message = "cloud_map_namespace_arn must be a Cloud Map namespace ARN."
  }
}

variable "cloud_map_hosted_zone_id" {
  description = "Route 53 private hosted zone of that namespace (registering an instance writes its records)."
  type        = string

  validation {
    condition     = can(regex("^Z[A-Z0-9]+$", var.cloud_map_hosted_zone_id))
    error_message = "cloud_map_hosted_zone_id must be a Route 53 hosted zone id (Z...)."
  }
}

variable "ecs_events_queue_arn" {
  description = "ARN of the SQS queue of ECS task state changes the worker's observer reads."
  type        = string

  validation {
    condition     = can(regex("^arn:aws[a-z-]*:sqs:", var.ecs_events_queue_arn))
    error_message = "ecs_events_queue_arn must be an SQS queue ARN."
  }
}
