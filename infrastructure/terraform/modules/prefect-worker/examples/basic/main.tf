# Example: the prefect-worker module on its own, with placeholder ids of what other modules make.
provider "aws" {
  region = "eu-central-1"

  default_tags {
    tags = { "sciflow:unit" = "example" }
  }
}

module "prefect_worker" {
  source = "../.."

  name = "example"
  work_pools = {
    example-small     = "sciflow-ecs"
    example-multinode = "aws-batch"
  }
  image               = "111122223333.dkr.ecr.eu-central-1.amazonaws.com/sciflow/example/flows:0123abc"
  ecs_cluster_arn     = "arn:aws:ecs:eu-central-1:111122223333:cluster/sciflow-example"
  vpc_id              = "vpc-0123456789abcdef0"
  vpc_cidr_block      = "10.40.0.0/16"
  subnet_ids          = ["subnet-0123456789abcdef0"]
  task_role_arn       = "arn:aws:iam::111122223333:role/sciflow-example-worker"
  execution_role_arn  = "arn:aws:iam::111122223333:role/sciflow-example-ecs-execution"
  execution_role_name = "sciflow-example-ecs-execution"
  kms_key_arn         = "arn:aws:kms:eu-central-1:111122223333:key/1234abcd-12ab-34cd-56ef-1234567890ab"
  log_group           = "/sciflow/example"
}

output "ecs_events_queue" {
  description = "The observer's queue."
  value       = module.prefect_worker.ecs_events_queue
}
