terraform {
  required_version = ">= 1.6.0"

  required_providers {
    aws = {
      source  = "hashicorp/aws"
      version = "~> 5.80"
    }
  }

  # Remote state: `terraform init -backend-config=bucket=... -backend-config=key=... -backend-config=region=...`
  # (flows/compute_units.py passes them); `terraform init -backend=false` to only validate.
  backend "s3" {}
}

provider "aws" {
  region = var.region

  # Runs with the user's own credentials in the user's account (Mode 2).
  # Every resource of the unit carries its tags; sciflow:unit is what the unit's budget and
  # cleanup find its resources by.
  default_tags {
    tags = local.unit_tags
  }
}
