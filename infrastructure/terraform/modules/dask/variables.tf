variable "name" {
  description = "Compute unit name; prefixes the security group's name."
  type        = string

  validation {
    condition     = can(regex("^[a-z][a-z0-9-]{1,30}[a-z0-9]$", var.name))
    error_message = "name must be 3-32 lowercase letters, digits or dashes, starting with a letter."
  }
}

variable "vpc_id" {
  description = "VPC the Dask scheduler, workers and their clients run in."
  type        = string

  validation {
    condition     = startswith(var.vpc_id, "vpc-")
    error_message = "vpc_id must be a VPC id (vpc-...)."
  }
}

variable "vpc_cidr_block" {
  description = "The VPC's CIDR block: members may reach EFS, FSx and the resolver inside it."
  type        = string

  validation {
    condition     = can(cidrhost(var.vpc_cidr_block, 0))
    error_message = "vpc_cidr_block must be an IPv4 CIDR block."
  }
}

variable "scheduler_port" {
  description = "Port of the Dask scheduler (distributed's default)."
  type        = number
  default     = 8786

  validation {
    condition     = var.scheduler_port > 1023 && var.scheduler_port < 32768
    error_message = "scheduler_port must be between 1024 and 32767 (below the ephemeral range)."
  }
}

variable "dashboard_port" {
  description = "Port of the Dask dashboard, reached from inside the group only."
  type        = number
  default     = 8787

  validation {
    condition     = var.dashboard_port > 1023 && var.dashboard_port < 32768
    error_message = "dashboard_port must be between 1024 and 32767 (below the ephemeral range)."
  }
}

variable "parameter_server_port" {
  description = "Port of the training parameter server (tasks/training/ecs.py DEFAULT_PORT)."
  type        = number
  default     = 29500

  validation {
    condition     = var.parameter_server_port > 1023 && var.parameter_server_port < 32768
    error_message = "parameter_server_port must be between 1024 and 32767 (below the ephemeral range)."
  }
}
