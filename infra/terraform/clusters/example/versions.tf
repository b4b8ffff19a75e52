terraform {
  required_version = ">= 1.9.0"

  required_providers {
    aws = {
      source  = "hashicorp/aws"
      version = ">= 5.60, < 7.0"
    }
  }

  # Keep state remote and locked for anything but a throw-away test:
  # backend "s3" {
  #   bucket       = "my-terraform-state"
  #   key          = "millionws/example.tfstate"
  #   region       = "eu-west-1"
  #   use_lockfile = true
  #   encrypt      = true
  # }
}

provider "aws" {
  region = var.region

  default_tags {
    tags = {
      project     = "millionws"
      cluster     = var.cluster_name
      managed-by  = "terraform"
      environment = var.environment
    }
  }
}
