variable "name" {
  description = "Compute unit name; compute environments, the queue and job definitions are named sciflow-<name>-*."
  type        = string

  validation {
    condition     = can(regex("^[a-z][a-z0-9-]{1,30}[a-z0-9]$", var.name))
    error_message = "name must be 3-32 lowercase letters, digits or dashes, starting with a letter."
  }
}

variable "vpc_id" {
  description = "VPC the Batch nodes run in."
  type        = string

  validation {
    condition     = startswith(var.vpc_id, "vpc-")
    error_message = "vpc_id must be a VPC id (vpc-...)."
  }
}

variable "vpc_cidr_block" {
  description = "The VPC's CIDR block: nodes may reach EFS, FSx and the resolver inside it."
  type        = string

  validation {
    condition     = can(cidrhost(var.vpc_cidr_block, 0))
    error_message = "vpc_cidr_block must be an IPv4 CIDR block."
  }
}

variable "subnet_id" {
  description = "The private subnet multi-node jobs run in: a cluster placement group keeps a job's nodes in one availability zone."
  type        = string

  validation {
    condition     = startswith(var.subnet_id, "subnet-")
    error_message = "subnet_id must be a subnet id (subnet-...)."
  }
}

variable "cpu_instance_types" {
  description = "EC2 instance types of the CPU compute environment (MPI simulation)."
  type        = list(string)
  default     = ["c6i.8xlarge", "c6i.16xlarge"]

  validation {
    condition     = length(var.cpu_instance_types) > 0
    error_message = "cpu_instance_types must name at least one instance type."
  }
}

variable "gpu_instance_types" {
  description = "EC2 instance types of the GPU compute environment (DDP training)."
  type        = list(string)
  default     = ["g5.12xlarge"]

  validation {
    condition     = length(var.gpu_instance_types) > 0 && alltrue([for t in var.gpu_instance_types : can(regex("^(g4dn|g5|g6|g6e|p3|p4d|p4de|p5)\\.", t))])
    error_message = "gpu_instance_types must be NVIDIA GPU instance types (g4dn, g5, g6, g6e, p3, p4d, p4de, p5)."
  }
}

variable "cpu_max_vcpus" {
  description = "Most vCPUs the CPU compute environment scales to (it scales to zero when idle)."
  type        = number
  default     = 256

  validation {
    condition     = var.cpu_max_vcpus >= 1
    error_message = "cpu_max_vcpus must be at least 1."
  }
}

variable "gpu_max_vcpus" {
  description = "Most vCPUs the GPU compute environment scales to (it scales to zero when idle)."
  type        = number
  default     = 192

  validation {
    condition     = var.gpu_max_vcpus >= 1
    error_message = "gpu_max_vcpus must be at least 1."
  }
}

variable "job_role_arn" {
  description = "IAM role the job containers assume (the iam module's flow-run role)."
  type        = string

  validation {
    condition     = can(regex("^arn:aws[a-z-]*:iam::[0-9]{12}:role/", var.job_role_arn))
    error_message = "job_role_arn must be an IAM role ARN."
  }
}

variable "execution_role_arn" {
  description = "IAM role ECS uses to start the containers and read their secrets (the ecs module's execution role)."
  type        = string

  validation {
    condition     = can(regex("^arn:aws[a-z-]*:iam::[0-9]{12}:role/", var.execution_role_arn))
    error_message = "execution_role_arn must be an IAM role ARN."
  }
}

variable "images" {
  description = "Image per job definition: simulation (MPICH and the simulator) and training (torch, DDP)."
  type        = object({ simulation = string, training = string })

  validation {
    condition     = alltrue([for i in values(var.images) : can(regex("^[^\\s]+[:@][^\\s]+$", i))])
    error_message = "images must name each image with a tag or digest (repo:tag or repo@sha256:...)."
  }
}

variable "simulation_node" {
  description = "vCPUs and memory (MiB) per node of a simulation job; a submission may override them."
  type        = object({ vcpus = number, memory_mib = number })
  default     = { vcpus = 32, memory_mib = 60000 }

  validation {
    condition     = var.simulation_node.vcpus >= 1 && var.simulation_node.memory_mib >= 512
    error_message = "simulation_node needs vcpus >= 1 and memory_mib >= 512."
  }
}

variable "training_node" {
  description = "vCPUs, memory (MiB) and GPUs per node of a training job; a submission may override them."
  type        = object({ vcpus = number, memory_mib = number, gpus = number })
  default     = { vcpus = 44, memory_mib = 180000, gpus = 4 }

  validation {
    condition     = var.training_node.vcpus >= 1 && var.training_node.memory_mib >= 512 && var.training_node.gpus >= 1
    error_message = "training_node needs vcpus >= 1, memory_mib >= 512 and gpus >= 1."
  }
}

variable "default_node_count" {
  description = "Nodes of a job when the submission does not say (tasks/compute/batch.py overrides numNodes)."
  type        = number
  default     = 2

  validation {
    condition     = var.default_node_count >= 2
    error_message = "default_node_count must be at least 2: these are multi-node job definitions."
  }
}

variable "efs_file_system_id" {
  description = "EFS file system mounted into every node."
  type        = string

  validation {
    condition     = startswith(var.efs_file_system_id, "fs-")
    error_message = "efs_file_system_id must be an EFS id (fs-...)."
  }
}

variable "efs_access_point_id" {
  description = "EFS access point the nodes mount through (fixed non-root owner)."
  type        = string

  validation {
    condition     = startswith(var.efs_access_point_id, "fsap-")
    error_message = "efs_access_point_id must be an EFS access point id (fsap-...)."
  }
}

variable "efs_mount_path" {
  description = "Where EFS is mounted inside the containers (tasks/compute/batch_worker.py BATCH_DEFAULT_EFS_MOUNT_PATH)."
  type        = string
  default     = "/mnt/efs"

  validation {
    condition     = startswith(var.efs_mount_path, "/")
    error_message = "efs_mount_path must be an absolute path."
  }
}

variable "log_group" {
  description = "CloudWatch log group the job containers write to (the ecs module's unit log group)."
  type        = string

  validation {
    condition     = length(var.log_group) > 0
    error_message = "log_group must not be empty."
  }
}

variable "log_group_arn" {
  description = "ARN of that log group (the nodes' agent writes to it)."
  type        = string

  validation {
    condition     = can(regex("^arn:aws[a-z-]*:logs:", var.log_group_arn))
    error_message = "log_group_arn must be a CloudWatch Logs ARN."
  }
}

variable "secrets" {
  description = "Environment variable name -> Secrets Manager ARN set in every node (the Prefect API URL and key); never clear values."
  type        = map(string)
  default     = {}

  validation {
    condition     = alltrue([for a in values(var.secrets) : can(regex("^arn:aws[a-z-]*:(secretsmanager|ssm):", a))])
    error_message = "secrets values must be Secrets Manager or SSM parameter ARNs."
  }
}

variable "ecr_repository_arns" {
  description = "ECR repositories the nodes pull from."
  type        = list(string)

  validation {
    condition     = length(var.ecr_repository_arns) > 0
    error_message = "ecr_repository_arns must not be empty."
  }
}
