output "bucket" {
  description = "Run data bucket name."
  value       = aws_s3_bucket.data.id
}

output "bucket_arn" {
  description = "Run data bucket ARN."
  value       = aws_s3_bucket.data.arn
}

output "storage_root" {
  description = "Storage root every run writes under: s3://<bucket>."
  value       = "s3://${aws_s3_bucket.data.id}"
}

output "kms_key_arn" {
  description = "ARN of the unit's KMS key."
  value       = aws_kms_key.this.arn
}

output "efs_file_system_id" {
  description = "EFS file system shared by the nodes of multi-node jobs."
  value       = aws_efs_file_system.this.id
}

output "efs_file_system_arn" {
  description = "EFS file system ARN."
  value       = aws_efs_file_system.this.arn
}

output "efs_access_point_id" {
  description = "EFS access point jobs mount (non-root owner, /shared)."
  value       = aws_efs_access_point.shared.id
}

output "efs_access_point_arn" {
  description = "EFS access point ARN."
  value       = aws_efs_access_point.shared.arn
}

output "fsx_file_system_id" {
  description = "FSx for Lustre file system id, or null without FSx."
  value       = one(aws_fsx_lustre_file_system.this[*].id)
}

output "fsx_file_system_arn" {
  description = "FSx for Lustre file system ARN, or null without FSx."
  value       = one(aws_fsx_lustre_file_system.this[*].arn)
}

output "fsx_mount" {
  description = "Where nodes mount the FSx file system, or null without FSx."
  value       = var.fsx_enabled ? var.fsx_mount : null
}
