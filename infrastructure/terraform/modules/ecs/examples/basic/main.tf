# Example: the ecs module on its own, with placeholder ids of what other modules make.
provider "aws" {
  region = "eu-central-1"

  default_tags {
    tags = { "sciflow:unit" = "example" }
  }
}

module "ecs" {
  source = "../.."

  name                = "example"
  vpc_id              = "vpc-0123456789abcdef0"
  vpc_cidr_block      = "10.40.0.0/16"
  subnet_ids          = ["subnet-0123456789abcdef0", "subnet-0123456789abcdef1"]
  kms_key_arn         = "arn:aws:kms:eu-central-1:111122223333:key/1234abcd-12ab-34cd-56ef-1234567890ab"
  ecr_repository_arns = ["arn:aws:ecr:eu-central-1:111122223333:repository/sciflow/example/flows"]
  gpu_instance_type   = "g5.xlarge"
  gpu_max_instances   = 1
}

output "cluster_arn" {
  description = "The cluster."
  value       = module.ecs.cluster_arn
}
