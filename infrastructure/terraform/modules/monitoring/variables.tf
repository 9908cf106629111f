variable "name" {
  description = "Compute unit name; the budget is sciflow-<name>."
  type        = string

  validation {
    condition     = can(regex("^[a-z][a-z0-9-]{1,30}[a-z0-9]$", var.name))
    error_message = "name must be 3-32 lowercase letters, digits or dashes, starting with a letter."
  }
}

variable "budget_usd" {
  description = "Monthly AWS Budget of the whole unit in USD (costs tagged sciflow:unit=<name>); flows refuse new work once it is spent."
  type        = number

  validation {
    condition     = var.budget_usd > 0 && var.budget_usd <= 1000000
    error_message = "budget_usd must be greater than 0 and at most 1000000."
  }
}

variable "alarm_emails" {
  description = "Addresses the alarm topic mails (each confirms its subscription once)."
  type        = list(string)
  default     = []

  validation {
    condition     = alltrue([for e in var.alarm_emails : can(regex("^[^@\\s]+@[^@\\s]+\\.[^@\\s]+$", e))])
    error_message = "alarm_emails must be email addresses."
  }
}

variable "kms_key_arn" {
  description = "ARN of the unit's KMS key: encrypts the alarm topic."
  type        = string

  validation {
    condition     = can(regex("^arn:aws[a-z-]*:kms:", var.kms_key_arn))
    error_message = "kms_key_arn must be a KMS key ARN."
  }
}

variable "batch_job_queue_arn" {
  description = "Batch job queue whose failed jobs raise an alarm."
  type        = string

  validation {
    condition     = can(regex("^arn:aws[a-z-]*:batch:", var.batch_job_queue_arn))
    error_message = "batch_job_queue_arn must be a Batch job queue ARN."
  }
}

variable "ecs_cluster_arn" {
  description = "ECS cluster whose tasks stopping with a failure raise an alarm."
  type        = string

  validation {
    condition     = can(regex("^arn:aws[a-z-]*:ecs:", var.ecs_cluster_arn))
    error_message = "ecs_cluster_arn must be an ECS cluster ARN."
  }
}

variable "failures_per_hour_alarm" {
  description = "Failed Batch jobs or ECS tasks in one hour that put the failure alarms in ALARM."
  type        = number
  default     = 3

  validation {
    condition     = var.failures_per_hour_alarm >= 1
    error_message = "failures_per_hour_alarm must be at least 1."
  }
}

variable "activate_cost_allocation_tag" {
  description = "Whether to activate sciflow:unit as a cost allocation tag (payer account only; the budget filters on it)."
  type        = bool
  default     = false
}
