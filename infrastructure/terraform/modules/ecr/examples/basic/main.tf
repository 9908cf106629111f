# Example: the ecr module on its own, with placeholder ids of what other modules make.
provider "aws" {
  region = "eu-central-1"

  default_tags {
    tags = { "sciflow:unit" = "example" }
  }
}

module "ecr" {
  source = "../.."

  name        = "example"
  kms_key_arn = "arn:aws:kms:eu-central-1:111122223333:key/1234abcd-12ab-34cd-56ef-1234567890ab"
}

output "repository_urls" {
  description = "Where images/build.py pushes."
  value       = module.ecr.repository_urls
}
