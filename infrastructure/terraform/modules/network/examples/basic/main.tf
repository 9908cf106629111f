# Example: the network module on its own, with placeholder ids of what other modules make.
provider "aws" {
  region = "eu-central-1"

  default_tags {
    tags = { "sciflow:unit" = "example" }
  }
}

module "network" {
  source = "../.."

  name               = "example"
  availability_zones = ["eu-central-1a", "eu-central-1b"]
  nat_gateway        = false # VPC endpoints only
  kms_key_arn        = "arn:aws:kms:eu-central-1:111122223333:key/1234abcd-12ab-34cd-56ef-1234567890ab"
}

output "private_subnet_ids" {
  description = "Where tasks and nodes run."
  value       = module.network.private_subnet_ids
}
