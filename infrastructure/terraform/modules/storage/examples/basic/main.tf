# Example: the storage module on its own, with placeholder ids of what other modules make.
provider "aws" {
  region = "eu-central-1"

  default_tags {
    tags = { "sciflow:unit" = "example" }
  }
}

module "storage" {
  source = "../.."

  name           = "example"
  bucket_name    = "example-sciflow-data"
  vpc_id         = "vpc-0123456789abcdef0"
  vpc_cidr_block = "10.40.0.0/16"
  subnet_ids     = ["subnet-0123456789abcdef0", "subnet-0123456789abcdef1"]
  run_role_arns  = ["arn:aws:iam::111122223333:role/sciflow-example-flow-run"]
  fsx_enabled    = true
}

output "storage_root" {
  description = "Where runs write."
  value       = module.storage.storage_root
}
