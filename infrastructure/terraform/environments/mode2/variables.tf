variable "unit_name" {
  description = "Compute unit name (ComputeUnit.name): lowercase letters, digits, dashes."
  type        = string

  validation {
    condition     = can(regex("^[a-z][a-z0-9-]{1,30}[a-z0-9]$", var.unit_name)) && var.unit_name != "local"
    error_message = "unit_name must be 3-32 lowercase letters, digits or dashes, starting with a letter, and not \"local\"."
  }
}

variable "region" {
  description = "AWS region the unit serves."
  type        = string

  validation {
    condition     = can(regex("^[a-z]{2}(-gov)?-[a-z]+-[0-9]$", var.region))
    error_message = "region must be an AWS region name, e.g. eu-central-1."
  }
}

variable "bucket_name" {
  description = "Name of the unit's run data bucket (globally unique)."
  type        = string

  validation {
    condition     = can(regex("^[a-z0-9][a-z0-9.-]{1,49}[a-z0-9]$", var.bucket_name))
    error_message = "bucket_name must be 3-51 lowercase letters, digits, dots or dashes (the access-log bucket adds -access-logs)."
  }
}

variable "image_tag" {
  description = "Tag of the flows, mpi and gpu images in the unit's ECR repositories (images/build.py tags with the git commit)."
  type        = string

  validation {
    condition     = can(regex("^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$", var.image_tag))
    error_message = "image_tag must be a Docker tag: letters, digits, _ . -, at most 128 characters."
  }
}

variable "spending_cap_usd" {
  description = "Most one run may spend in USD: a run whose estimate (size class price times its time limit) exceeds it is refused."
  type        = number

  validation {
    condition     = var.spending_cap_usd > 0
    error_message = "spending_cap_usd must be greater than 0."
  }
}

variable "budget_usd" {
  description = "Monthly AWS Budget of the whole unit in USD; flows refuse new work on the unit once it is spent."
  type        = number

  validation {
    condition     = var.budget_usd > 0
    error_message = "budget_usd must be greater than 0."
  }
}

variable "tags" {
  description = "Extra tags on every resource (cost centre, project); sciflow:* keys are the unit's own."
  type        = map(string)
  default     = {}

  validation {
    condition     = alltrue([for k in keys(var.tags) : !startswith(k, "sciflow:") && !startswith(k, "aws:")])
    error_message = "tags must not use the sciflow: or aws: prefixes."
  }
}

variable "availability_zones" {
  description = "Availability zones of the unit's subnets (2 to 4, in the region)."
  type        = list(string)

  validation {
    condition     = length(var.availability_zones) >= 2 && length(var.availability_zones) <= 4 && alltrue([for z in var.availability_zones : startswith(z, var.region)])
    error_message = "availability_zones must name 2 to 4 zones of the region, e.g. [\"eu-central-1a\", \"eu-central-1b\"]."
  }
}

variable "prefect_api_key" {
  description = "Whether the Prefect API takes a key (Prefect Cloud); false for a self-hosted server without auth."
  type        = bool
  default     = true
}

variable "vpc_cidr_block" {
  description = "IPv4 CIDR block of the unit's VPC."
  type        = string
  default     = "10.40.0.0/16"

  validation {
    condition     = can(cidrhost(var.vpc_cidr_block, 0))
    error_message = "vpc_cidr_block must be an IPv4 CIDR block."
  }
}

variable "nat_gateway" {
  description = "Whether private subnets reach the internet through NAT gateways (else VPC endpoints only)."
  type        = bool
  default     = true
}

variable "gpu_enabled" {
  description = "Whether the ECS cluster gets EC2 GPU capacity for the gpu size class."
  type        = bool
  default     = true
}

variable "fsx_enabled" {
  description = "Whether to put FSx for Lustre in front of the model registry."
  type        = bool
  default     = false
}

variable "alarm_emails" {
  description = "Addresses that receive failure alarms and budget notifications."
  type        = list(string)
  default     = []

  validation {
    condition     = alltrue([for e in var.alarm_emails : can(regex("^[^@\\s]+@[^@\\s]+\\.[^@\\s]+$", e))])
    error_message = "alarm_emails must be email addresses."
  }
}

variable "trusted_principal_arns" {
  description = "The sciflow operator's IAM roles that may assume this account's cross-account role (given by the operator)."
  type        = list(string)

  validation {
    condition     = length(var.trusted_principal_arns) > 0 && alltrue([for a in var.trusted_principal_arns : can(regex("^arn:aws(-cn|-us-gov)?:iam::[0-9]{12}:role/", a))])
    error_message = "trusted_principal_arns must be a non-empty list of IAM role ARNs."
  }
}

variable "external_id" {
  description = "External id the cross-account role requires (given by the operator; ComputeUnit.external_id carries it)."
  type        = string
  sensitive   = true

  validation {
    condition     = can(regex("^[A-Za-z0-9+=,.@:/-]{16,1224}$", var.external_id))
    error_message = "external_id must be 16-1224 characters of letters, digits and + = , . @ : / -."
  }
}
