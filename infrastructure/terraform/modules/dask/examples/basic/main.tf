# Example: the dask module on its own, with placeholder ids of what other modules make.
provider "aws" {
  region = "eu-central-1"

  default_tags {
    tags = { "sciflow:unit" = "example" }
  }
}

module "dask" {
  source = "../.."

  name           = "example"
  vpc_id         = "vpc-0123456789abcdef0"
  vpc_cidr_block = "10.40.0.0/16"
}

output "security_group_id" {
  description = "ComputeUnit security_groups."
  value       = module.dask.security_group_id
}
