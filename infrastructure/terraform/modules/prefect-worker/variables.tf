variable "name" {
  description = "Compute unit name; prefixes the service, queue, rule and secret names."
  type        = string

  validation {
    condition     = can(regex("^[a-z][a-z0-9-]{1,30}[a-z0-9]$", var.name))
    error_message = "name must be 3-32 lowercase letters, digits or dashes, starting with a letter."
  }
}

variable "work_pools" {
  description = "Work pool name -> worker type (sciflow-ecs or aws-batch, both sciflow's); one ECS service runs one worker per pool."
  type        = map(string)

  validation {
    condition     = length(var.work_pools) > 0 && alltrue([for t in values(var.work_pools) : contains(["sciflow-ecs", "aws-batch"], t)])
    error_message = "work_pools must map at least one pool name to sciflow-ecs or aws-batch."
  }
}

variable "image" {
  description = "Image of the workers: the flows image (sciflow, prefect-aws, the aws-batch worker), with a tag or digest."
  type        = string

  validation {
    condition     = can(regex("^[^\\s]+[:@][^\\s]+$", var.image))
    error_message = "image must name a tag or digest (repo:tag or repo@sha256:...)."
  }
}

variable "ecs_cluster_arn" {
  description = "ECS cluster the worker services run in (and whose task state changes the observer reads)."
  type        = string

  validation {
    condition     = can(regex("^arn:aws[a-z-]*:ecs:", var.ecs_cluster_arn))
    error_message = "ecs_cluster_arn must be an ECS cluster ARN."
  }
}

variable "vpc_id" {
  description = "VPC of the worker services."
  type        = string

  validation {
    condition     = startswith(var.vpc_id, "vpc-")
    error_message = "vpc_id must be a VPC id (vpc-...)."
  }
}

variable "vpc_cidr_block" {
  description = "The VPC's CIDR block (DNS to its resolver)."
  type        = string

  validation {
    condition     = can(cidrhost(var.vpc_cidr_block, 0))
    error_message = "vpc_cidr_block must be an IPv4 CIDR block."
  }
}

variable "subnet_ids" {
  description = "Private subnets the worker services run in (no public IP)."
  type        = list(string)

  validation {
    condition     = length(var.subnet_ids) > 0 && alltrue([for s in var.subnet_ids : startswith(s, "subnet-")])
    error_message = "subnet_ids must be a non-empty list of subnet ids (subnet-...)."
  }
}

variable "task_role_arn" {
  description = "Role the workers act as (the iam module's worker role)."
  type        = string

  validation {
    condition     = can(regex("^arn:aws[a-z-]*:iam::[0-9]{12}:role/", var.task_role_arn))
    error_message = "task_role_arn must be an IAM role ARN."
  }
}

variable "execution_role_arn" {
  description = "Task execution role (the ecs module's); it is granted reading the Prefect API secrets."
  type        = string

  validation {
    condition     = can(regex("^arn:aws[a-z-]*:iam::[0-9]{12}:role/", var.execution_role_arn))
    error_message = "execution_role_arn must be an IAM role ARN."
  }
}

variable "execution_role_name" {
  description = "Name of that execution role."
  type        = string

  validation {
    condition     = length(var.execution_role_name) > 0
    error_message = "execution_role_name must not be empty."
  }
}

variable "kms_key_arn" {
  description = "ARN of the unit's KMS key: encrypts the secrets and the event queue."
  type        = string

  validation {
    condition     = can(regex("^arn:aws[a-z-]*:kms:", var.kms_key_arn))
    error_message = "kms_key_arn must be a KMS key ARN."
  }
}

variable "log_group" {
  description = "CloudWatch log group the workers write to."
  type        = string

  validation {
    condition     = length(var.log_group) > 0
    error_message = "log_group must not be empty."
  }
}

variable "prefect_api_key" {
  description = "Whether the Prefect API takes a key (Prefect Cloud): then a key secret is made and given to workers and jobs. A self-hosted server without auth needs none."
  type        = bool
  default     = true
}

variable "prefect_api_port" {
  description = "TCP port of the Prefect API the workers reach (443 for Prefect Cloud or a server behind TLS)."
  type        = number
  default     = 443

  validation {
    condition     = var.prefect_api_port >= 1 && var.prefect_api_port <= 65535
    error_message = "prefect_api_port must be a TCP port."
  }
}

variable "cpu" {
  description = "CPU units of a worker task (1024 = 1 vCPU)."
  type        = number
  default     = 512

  validation {
    condition     = contains([256, 512, 1024, 2048, 4096], var.cpu)
    error_message = "cpu must be a Fargate CPU size: 256, 512, 1024, 2048 or 4096."
  }
}

variable "memory_mib" {
  description = "Memory of a worker task in MiB."
  type        = number
  default     = 1024

  validation {
    condition     = var.memory_mib >= 512 && var.memory_mib <= 30720
    error_message = "memory_mib must be between 512 and 30720."
  }
}
