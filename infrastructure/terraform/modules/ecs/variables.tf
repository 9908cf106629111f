variable "name" {
  description = "Compute unit name; the cluster is sciflow-<name>."
  type        = string

  validation {
    condition     = can(regex("^[a-z][a-z0-9-]{1,30}[a-z0-9]$", var.name))
    error_message = "name must be 3-32 lowercase letters, digits or dashes, starting with a letter."
  }
}

variable "vpc_id" {
  description = "VPC of the cluster's tasks, GPU hosts and Cloud Map namespace."
  type        = string

  validation {
    condition     = startswith(var.vpc_id, "vpc-")
    error_message = "vpc_id must be a VPC id (vpc-...)."
  }
}

variable "vpc_cidr_block" {
  description = "The VPC's CIDR block: GPU hosts may reach addresses inside it."
  type        = string

  validation {
    condition     = can(cidrhost(var.vpc_cidr_block, 0))
    error_message = "vpc_cidr_block must be an IPv4 CIDR block."
  }
}

variable "subnet_ids" {
  description = "Private subnets GPU hosts launch in."
  type        = list(string)

  validation {
    condition     = length(var.subnet_ids) > 0 && alltrue([for s in var.subnet_ids : startswith(s, "subnet-")])
    error_message = "subnet_ids must be a non-empty list of subnet ids (subnet-...)."
  }
}

variable "kms_key_arn" {
  description = "ARN of the KMS key that encrypts the unit's log group."
  type        = string

  validation {
    condition     = can(regex("^arn:aws[a-z-]*:kms:", var.kms_key_arn))
    error_message = "kms_key_arn must be a KMS key ARN."
  }
}

variable "ecr_repository_arns" {
  description = "ECR repositories the execution role may pull from."
  type        = list(string)

  validation {
    condition     = length(var.ecr_repository_arns) > 0 && alltrue([for a in var.ecr_repository_arns : can(regex("^arn:aws[a-z-]*:ecr:", a))])
    error_message = "ecr_repository_arns must be a non-empty list of ECR repository ARNs."
  }
}

variable "log_retention_days" {
  description = "Days the unit's log group keeps flow, Dask, training and Batch logs."
  type        = number
  default     = 365

  validation {
    condition     = contains([365, 400, 545, 731, 1096, 1827, 2192, 2557, 2922, 3288, 3653], var.log_retention_days)
    error_message = "log_retention_days must be a CloudWatch Logs retention of at least 365 days (365, 400, 545, 731, ...)."
  }
}

variable "cloud_map_namespace" {
  description = "Private DNS namespace the parameter-server training registers its server in (tasks/training/ecs.py DEFAULT_NAMESPACE)."
  type        = string
  default     = "sciflow.local"

  validation {
    condition     = can(regex("^[a-z0-9]([a-z0-9-]*[a-z0-9])?(\\.[a-z0-9]([a-z0-9-]*[a-z0-9])?)+$", var.cloud_map_namespace))
    error_message = "cloud_map_namespace must be a DNS name with at least two labels, e.g. sciflow.local."
  }
}

variable "gpu_enabled" {
  description = "Whether the cluster gets EC2 GPU capacity (an Auto Scaling group and capacity provider) for the gpu size class; Fargate has no GPUs."
  type        = bool
  default     = true
}

variable "gpu_instance_type" {
  description = "EC2 instance type of the GPU hosts."
  type        = string
  default     = "g5.2xlarge"

  validation {
    condition     = can(regex("^(g4dn|g5|g6|g6e|p3|p4d|p4de|p5)\\.[0-9a-z]+$", var.gpu_instance_type))
    error_message = "gpu_instance_type must be an NVIDIA GPU instance type (g4dn, g5, g6, g6e, p3, p4d, p4de, p5)."
  }
}

variable "gpu_max_instances" {
  description = "Most GPU hosts the capacity provider may scale to (it scales to zero when idle)."
  type        = number
  default     = 2

  validation {
    condition     = var.gpu_max_instances >= 1 && var.gpu_max_instances <= 100
    error_message = "gpu_max_instances must be between 1 and 100."
  }
}

variable "gpu_root_volume_gib" {
  description = "Root volume size of a GPU host in GiB (images with CUDA torch are large)."
  type        = number
  default     = 100

  validation {
    condition     = var.gpu_root_volume_gib >= 30 && var.gpu_root_volume_gib <= 2000
    error_message = "gpu_root_volume_gib must be between 30 and 2000."
  }
}
