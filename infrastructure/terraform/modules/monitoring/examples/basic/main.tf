# Example: the monitoring module on its own, with placeholder ids of what other modules make.
provider "aws" {
  region = "eu-central-1"

  default_tags {
    tags = { "sciflow:unit" = "example" }
  }
}

module "monitoring" {
  source = "../.."

  name                = "example"
  budget_usd          = 1000
  alarm_emails        = ["ops@example.org"]
  kms_key_arn         = "arn:aws:kms:eu-central-1:111122223333:key/1234abcd-12ab-34cd-56ef-1234567890ab"
  batch_job_queue_arn = "arn:aws:batch:eu-central-1:111122223333:job-queue/sciflow-example-multinode"
  ecs_cluster_arn     = "arn:aws:ecs:eu-central-1:111122223333:cluster/sciflow-example"
}

output "budget_name" {
  description = "The unit's budget."
  value       = module.monitoring.budget_name
}
