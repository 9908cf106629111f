# Example: the batch module on its own, with placeholder ids of what other modules make.
provider "aws" {
  region = "eu-central-1"

  default_tags {
    tags = { "sciflow:unit" = "example" }
  }
}

module "batch" {
  source = "../.."

  name                = "example"
  vpc_id              = "vpc-0123456789abcdef0"
  vpc_cidr_block      = "10.40.0.0/16"
  subnet_id           = "subnet-0123456789abcdef0"
  job_role_arn        = "arn:aws:iam::111122223333:role/sciflow-example-flow-run"
  execution_role_arn  = "arn:aws:iam::111122223333:role/sciflow-example-ecs-execution"
  efs_file_system_id  = "fs-0123456789abcdef0"
  efs_access_point_id = "fsap-0123456789abcdef0"
  log_group           = "/sciflow/example"
  log_group_arn       = "arn:aws:logs:eu-central-1:111122223333:log-group:/sciflow/example"
  ecr_repository_arns = ["arn:aws:ecr:eu-central-1:111122223333:repository/sciflow/example/mpi"]
  images = {
    simulation = "111122223333.dkr.ecr.eu-central-1.amazonaws.com/sciflow/example/mpi:0123abc"
    training   = "111122223333.dkr.ecr.eu-central-1.amazonaws.com/sciflow/example/gpu:0123abc"
  }
}

output "job_definitions" {
  description = "What ComputeUnit.batch_job_definitions names."
  value       = module.batch.job_definitions
}
