variable "name" {
  description = "Compute unit name; prefixes every resource name."
  type        = string

  validation {
    condition     = can(regex("^[a-z][a-z0-9-]{1,30}[a-z0-9]$", var.name))
    error_message = "name must be 3-32 lowercase letters, digits or dashes, starting with a letter."
  }
}

variable "bucket_name" {
  description = "Name of the run data bucket (storage root, model registry, audit records); globally unique."
  type        = string

  validation {
    condition     = can(regex("^[a-z0-9][a-z0-9.-]{1,49}[a-z0-9]$", var.bucket_name)) && !strcontains(var.bucket_name, "..")
    error_message = "bucket_name must be 3-51 lowercase letters, digits, dots or dashes (the access-log bucket adds -access-logs)."
  }
}

variable "vpc_id" {
  description = "VPC the EFS mount targets and FSx file system live in."
  type        = string

  validation {
    condition     = startswith(var.vpc_id, "vpc-")
    error_message = "vpc_id must be a VPC id (vpc-...)."
  }
}

variable "vpc_cidr_block" {
  description = "The VPC's CIDR block: NFS (EFS) and Lustre (FSx) clients are admitted from it only."
  type        = string

  validation {
    condition     = can(cidrhost(var.vpc_cidr_block, 0))
    error_message = "vpc_cidr_block must be an IPv4 CIDR block."
  }
}

variable "subnet_ids" {
  description = "Private subnets: one EFS mount target in each; FSx uses the first."
  type        = list(string)

  validation {
    condition     = length(var.subnet_ids) > 0 && alltrue([for s in var.subnet_ids : startswith(s, "subnet-")])
    error_message = "subnet_ids must be a non-empty list of subnet ids (subnet-...)."
  }
}

variable "run_role_arns" {
  description = "Roles runs assume: the bucket policy denies them deleting or unlocking audit records (tasks/cleanup/audit.py audit_protection_statements)."
  type        = list(string)

  validation {
    condition     = length(var.run_role_arns) > 0 && alltrue([for a in var.run_role_arns : can(regex("^arn:aws(-cn|-us-gov)?:iam::[0-9]{12}:role/", a))])
    error_message = "run_role_arns must be a non-empty list of IAM role ARNs."
  }
}

variable "noncurrent_version_days" {
  description = "Days a replaced or deleted object version in a run directory is kept before S3 removes it."
  type        = number
  default     = 30

  validation {
    condition     = var.noncurrent_version_days >= 1 && var.noncurrent_version_days <= 3650
    error_message = "noncurrent_version_days must be between 1 and 3650."
  }
}

variable "efs_posix_uid" {
  description = "POSIX user and group id files on the shared EFS access point belong to (the images' non-root user)."
  type        = number
  default     = 1000

  validation {
    condition     = var.efs_posix_uid >= 1 && var.efs_posix_uid < 65535
    error_message = "efs_posix_uid must be a non-root id between 1 and 65534."
  }
}

variable "fsx_enabled" {
  description = "Whether to create an FSx for Lustre file system linked to the registry/ prefix of the data bucket."
  type        = bool
  default     = false
}

variable "fsx_storage_capacity_gib" {
  description = "FSx for Lustre capacity in GiB (PERSISTENT_2: 1200 or a multiple of 2400)."
  type        = number
  default     = 1200

  validation {
    condition     = var.fsx_storage_capacity_gib == 1200 || var.fsx_storage_capacity_gib % 2400 == 0
    error_message = "fsx_storage_capacity_gib must be 1200 or a multiple of 2400."
  }
}

variable "fsx_mount" {
  description = "Path the FSx file system is mounted at on the nodes that load models."
  type        = string
  default     = "/fsx"

  validation {
    condition     = startswith(var.fsx_mount, "/")
    error_message = "fsx_mount must be an absolute path."
  }
}

variable "force_destroy" {
  description = "Whether destroying the unit may delete a non-empty bucket (objects under Object Lock still refuse)."
  type        = bool
  default     = false
}
