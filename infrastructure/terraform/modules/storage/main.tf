data "aws_caller_identity" "current" {}

data "aws_partition" "current" {}

data "aws_region" "current" {}

locals {
  account = data.aws_caller_identity.current.account_id
  root    = "arn:${data.aws_partition.current.partition}:iam::${local.account}:root"
  # Keep in step with tasks/cleanup/audit.py (AUDIT_PREFIX, AUDIT_DENIED_ACTIONS) and
  # tasks/storage/registry.py (REGISTRY_DIR).
  audit_prefix    = "audit/"
  registry_prefix = "registry/"
  # s3:PutObjectRetention is not denied: a locked record's PutObject needs it, and shortening
  # a GOVERNANCE retention also needs s3:BypassGovernanceRetention, which is.
  audit_denied_actions = [
    "s3:DeleteObject",
    "s3:DeleteObjectVersion",
    "s3:PutObjectLegalHold",
    "s3:BypassGovernanceRetention",
  ]
}

# One key per unit encrypts its buckets, file systems, log groups, topics and repositories.
data "aws_iam_policy_document" "key" {
  #checkov:skip=CKV_AWS_109:a key policy's "*" resource is this key alone; actions are listed, none is kms:*
  #checkov:skip=CKV_AWS_111:a key policy's "*" resource is this key alone; actions are listed, none is kms:*
  #checkov:skip=CKV_AWS_356:a key policy's "*" resource is this key alone; actions are listed, none is kms:*
  statement {
    sid = "AccountAdministersAndDelegatesToIam"
    principals {
      type        = "AWS"
      identifiers = [local.root]
    }
    actions = [
      "kms:CancelKeyDeletion",
      "kms:CreateGrant",
      "kms:Decrypt",
      "kms:DescribeKey",
      "kms:DisableKey",
      "kms:EnableKey",
      "kms:EnableKeyRotation",
      "kms:Encrypt",
      "kms:GenerateDataKey",
      "kms:GenerateDataKeyWithoutPlaintext",
      "kms:GetKeyPolicy",
      "kms:GetKeyRotationStatus",
      "kms:ListGrants",
      "kms:ListResourceTags",
      "kms:PutKeyPolicy",
      "kms:ReEncryptFrom",
      "kms:ReEncryptTo",
      "kms:RetireGrant",
      "kms:RevokeGrant",
      "kms:ScheduleKeyDeletion",
      "kms:TagResource",
      "kms:UntagResource",
      "kms:UpdateKeyDescription",
    ]
    # In a key policy "*" is this key.
    resources = ["*"]
  }

  statement {
    sid = "CloudWatchLogsEncryptsTheUnitsLogGroups"
    principals {
      type        = "Service"
      identifiers = ["logs.${data.aws_region.current.name}.amazonaws.com"]
    }
    actions   = ["kms:Encrypt", "kms:Decrypt", "kms:ReEncryptFrom", "kms:ReEncryptTo", "kms:GenerateDataKey", "kms:DescribeKey"]
    resources = ["*"]
    condition {
      test     = "ArnLike"
      variable = "kms:EncryptionContext:aws:logs:arn"
      values   = ["arn:${data.aws_partition.current.partition}:logs:${data.aws_region.current.name}:${local.account}:log-group:/sciflow/${var.name}*"]
    }
  }

  statement {
    sid = "AlarmSourcesPublishToTheEncryptedTopicAndQueue"
    principals {
      type        = "Service"
      identifiers = ["events.amazonaws.com", "budgets.amazonaws.com", "cloudwatch.amazonaws.com"]
    }
    actions   = ["kms:Decrypt", "kms:GenerateDataKey"]
    resources = ["*"]
    condition {
      test     = "StringEquals"
      variable = "aws:SourceAccount"
      values   = [local.account]
    }
  }
}

resource "aws_kms_key" "this" {
  description             = "sciflow unit ${var.name}: data, file systems, logs, topics"
  enable_key_rotation     = true
  deletion_window_in_days = 30
  policy                  = data.aws_iam_policy_document.key.json
}

resource "aws_kms_alias" "this" {
  name          = "alias/sciflow-${var.name}"
  target_key_id = aws_kms_key.this.key_id
}

# --- S3: server access logs -------------------------------------------------------------

resource "aws_s3_bucket" "access_logs" {
  #checkov:skip=CKV_AWS_18:this bucket is the access-log target; logging it would log itself
  #checkov:skip=CKV_AWS_144:access logs stay in the unit's region; replication is the operator's choice
  #checkov:skip=CKV_AWS_145:S3 server access log delivery supports only SSE-S3 on the target bucket
  #checkov:skip=CKV2_AWS_62:nothing consumes events of access-log objects
  bucket        = "${var.bucket_name}-access-logs"
  force_destroy = var.force_destroy
}

resource "aws_s3_bucket_ownership_controls" "access_logs" {
  bucket = aws_s3_bucket.access_logs.id
  rule {
    object_ownership = "BucketOwnerEnforced"
  }
}

resource "aws_s3_bucket_public_access_block" "access_logs" {
  bucket                  = aws_s3_bucket.access_logs.id
  block_public_acls       = true
  block_public_policy     = true
  ignore_public_acls      = true
  restrict_public_buckets = true
}

resource "aws_s3_bucket_versioning" "access_logs" {
  bucket = aws_s3_bucket.access_logs.id
  versioning_configuration {
    status = "Enabled"
  }
}

resource "aws_s3_bucket_server_side_encryption_configuration" "access_logs" {
  bucket = aws_s3_bucket.access_logs.id
  rule {
    apply_server_side_encryption_by_default {
      sse_algorithm = "AES256"
    }
  }
}

resource "aws_s3_bucket_lifecycle_configuration" "access_logs" {
  bucket = aws_s3_bucket.access_logs.id

  rule {
    id     = "expire-access-logs"
    status = "Enabled"
    filter {}
    expiration {
      days = 400
    }
    noncurrent_version_expiration {
      noncurrent_days = 30
    }
    abort_incomplete_multipart_upload {
      days_after_initiation = 1
    }
  }
}

data "aws_iam_policy_document" "access_logs" {
  statement {
    sid = "S3LogDelivery"
    principals {
      type        = "Service"
      identifiers = ["logging.s3.amazonaws.com"]
    }
    actions   = ["s3:PutObject"]
    resources = ["${aws_s3_bucket.access_logs.arn}/data/*"]
    condition {
      test     = "ArnLike"
      variable = "aws:SourceArn"
      values   = [aws_s3_bucket.data.arn]
    }
    condition {
      test     = "StringEquals"
      variable = "aws:SourceAccount"
      values   = [local.account]
    }
  }

  statement {
    sid     = "DenyInsecureTransport"
    effect  = "Deny"
    actions = ["s3:GetObject", "s3:PutObject", "s3:ListBucket", "s3:DeleteObject"]
    principals {
      type        = "AWS"
      identifiers = ["*"]
    }
    resources = [aws_s3_bucket.access_logs.arn, "${aws_s3_bucket.access_logs.arn}/*"]
    condition {
      test     = "Bool"
      variable = "aws:SecureTransport"
      values   = ["false"]
    }
  }
}

resource "aws_s3_bucket_policy" "access_logs" {
  bucket = aws_s3_bucket.access_logs.id
  policy = data.aws_iam_policy_document.access_logs.json
}

# --- S3: run data, model registry, audit records ---------------------------------------

resource "aws_s3_bucket" "data" {
  #checkov:skip=CKV_AWS_144:run data stays in the unit's region (data residency); replication is the operator's choice
  #checkov:skip=CKV2_AWS_62:flows track their own objects; no consumer of bucket events exists
  bucket        = var.bucket_name
  force_destroy = var.force_destroy
  # Audit records are written under Object Lock, per object and with no bucket default, so
  # intermediates stay removable (tasks/cleanup/audit.py write_record).
  object_lock_enabled = true
}

resource "aws_s3_bucket_ownership_controls" "data" {
  bucket = aws_s3_bucket.data.id
  rule {
    object_ownership = "BucketOwnerEnforced"
  }
}

resource "aws_s3_bucket_public_access_block" "data" {
  bucket                  = aws_s3_bucket.data.id
  block_public_acls       = true
  block_public_policy     = true
  ignore_public_acls      = true
  restrict_public_buckets = true
}

resource "aws_s3_bucket_versioning" "data" {
  bucket = aws_s3_bucket.data.id
  versioning_configuration {
    status = "Enabled"
  }
}

resource "aws_s3_bucket_server_side_encryption_configuration" "data" {
  bucket = aws_s3_bucket.data.id
  rule {
    apply_server_side_encryption_by_default {
      sse_algorithm     = "aws:kms"
      kms_master_key_id = aws_kms_key.this.arn
    }
    bucket_key_enabled = true
  }
}

resource "aws_s3_bucket_logging" "data" {
  bucket        = aws_s3_bucket.data.id
  target_bucket = aws_s3_bucket.access_logs.id
  target_prefix = "data/"
}

# S3 lifecycle filters match a key prefix, not a pattern such as `*/tmp/`: the secure cleanup
# flow purges a run's tmp/ intermediates itself (every version); these rules catch what a
# crashed run leaves: incomplete multipart uploads and replaced or deleted versions.
resource "aws_s3_bucket_lifecycle_configuration" "data" {
  bucket = aws_s3_bucket.data.id

  rule {
    id     = "abort-incomplete-uploads"
    status = "Enabled"
    filter {}
    abort_incomplete_multipart_upload {
      days_after_initiation = 1
    }
  }

  rule {
    id     = "expire-old-run-versions"
    status = "Enabled"
    filter {
      prefix = "${var.name}/"
    }
    noncurrent_version_expiration {
      noncurrent_days = var.noncurrent_version_days
    }
    expiration {
      expired_object_delete_marker = true
    }
  }

  depends_on = [aws_s3_bucket_versioning.data]
}

data "aws_iam_policy_document" "data" {
  statement {
    sid     = "DenyInsecureTransport"
    effect  = "Deny"
    actions = ["s3:GetObject", "s3:PutObject", "s3:ListBucket", "s3:DeleteObject"]
    principals {
      type        = "AWS"
      identifiers = ["*"]
    }
    resources = [aws_s3_bucket.data.arn, "${aws_s3_bucket.data.arn}/*"]
    condition {
      test     = "Bool"
      variable = "aws:SecureTransport"
      values   = ["false"]
    }
  }

  # tasks/cleanup/audit.py audit_protection_statements: run roles keep audit records.
  statement {
    sid       = "SciflowRunRolesKeepAuditRecords"
    effect    = "Deny"
    actions   = local.audit_denied_actions
    resources = ["${aws_s3_bucket.data.arn}/${local.audit_prefix}*"]
    principals {
      type        = "AWS"
      identifiers = sort(var.run_role_arns)
    }
  }
}

resource "aws_s3_bucket_policy" "data" {
  bucket = aws_s3_bucket.data.id
  policy = data.aws_iam_policy_document.data.json

  depends_on = [aws_s3_bucket_public_access_block.data]
}

# --- EFS: shared by the nodes of a multi-node Batch job ---------------------------------

resource "aws_security_group" "efs" {
  name        = "${var.name}-efs"
  description = "NFS from inside the VPC to the EFS mount targets"
  vpc_id      = var.vpc_id

  tags = { Name = "${var.name}-efs" }
}

resource "aws_vpc_security_group_ingress_rule" "efs_nfs" {
  security_group_id = aws_security_group.efs.id
  description       = "NFS from the VPC"
  cidr_ipv4         = var.vpc_cidr_block
  ip_protocol       = "tcp"
  from_port         = 2049
  to_port           = 2049
}

resource "aws_efs_file_system" "this" {
  creation_token = "sciflow-${var.name}"
  encrypted      = true
  kms_key_id     = aws_kms_key.this.arn

  lifecycle_policy {
    transition_to_ia = "AFTER_30_DAYS"
  }

  tags = { Name = "sciflow-${var.name}" }
}

resource "aws_efs_backup_policy" "this" {
  file_system_id = aws_efs_file_system.this.id
  backup_policy {
    status = "DISABLED" # scratch shared by the nodes of running jobs; results go to S3
  }
}

resource "aws_efs_mount_target" "this" {
  count           = length(var.subnet_ids)
  file_system_id  = aws_efs_file_system.this.id
  subnet_id       = var.subnet_ids[count.index]
  security_groups = [aws_security_group.efs.id]
}

# Jobs mount this access point: a fixed non-root owner and root directory, whatever the image.
resource "aws_efs_access_point" "shared" {
  file_system_id = aws_efs_file_system.this.id

  posix_user {
    uid = var.efs_posix_uid
    gid = var.efs_posix_uid
  }

  root_directory {
    path = "/shared"
    creation_info {
      owner_uid   = var.efs_posix_uid
      owner_gid   = var.efs_posix_uid
      permissions = "0750"
    }
  }

  tags = { Name = "${var.name}-shared" }
}

data "aws_iam_policy_document" "efs" {
  statement {
    sid    = "DenyUnencryptedTransport"
    effect = "Deny"
    principals {
      type        = "AWS"
      identifiers = ["*"]
    }
    actions   = ["elasticfilesystem:ClientMount", "elasticfilesystem:ClientWrite", "elasticfilesystem:ClientRootAccess"]
    resources = [aws_efs_file_system.this.arn]
    condition {
      test     = "Bool"
      variable = "aws:SecureTransport"
      values   = ["false"]
    }
  }

  statement {
    sid = "MountThroughTheAccessPointOnly"
    principals {
      type        = "AWS"
      identifiers = [local.root]
    }
    actions   = ["elasticfilesystem:ClientMount", "elasticfilesystem:ClientWrite"]
    resources = [aws_efs_file_system.this.arn]
    condition {
      test     = "StringEquals"
      variable = "elasticfilesystem:AccessPointArn"
      values   = [aws_efs_access_point.shared.arn]
    }
  }
}

resource "aws_efs_file_system_policy" "this" {
  file_system_id = aws_efs_file_system.this.id
  policy         = data.aws_iam_policy_document.efs.json
}

# --- FSx for Lustre: the model registry, loaded from S3 on first read -------------------

resource "aws_security_group" "fsx" {
  count       = var.fsx_enabled ? 1 : 0
  name        = "${var.name}-fsx"
  description = "Lustre from inside the VPC to the FSx file system"
  vpc_id      = var.vpc_id

  tags = { Name = "${var.name}-fsx" }
}

resource "aws_vpc_security_group_ingress_rule" "fsx_lustre" {
  count             = var.fsx_enabled ? 1 : 0
  security_group_id = aws_security_group.fsx[0].id
  description       = "Lustre (LNET) from the VPC"
  cidr_ipv4         = var.vpc_cidr_block
  ip_protocol       = "tcp"
  from_port         = 988
  to_port           = 988
}

resource "aws_vpc_security_group_ingress_rule" "fsx_lustre_clients" {
  count             = var.fsx_enabled ? 1 : 0
  security_group_id = aws_security_group.fsx[0].id
  description       = "Lustre client ports from the VPC"
  cidr_ipv4         = var.vpc_cidr_block
  ip_protocol       = "tcp"
  from_port         = 1018
  to_port           = 1023
}

resource "aws_vpc_security_group_egress_rule" "fsx_lustre_servers" {
  count             = var.fsx_enabled ? 1 : 0
  security_group_id = aws_security_group.fsx[0].id
  description       = "Lustre between the file servers"
  cidr_ipv4         = var.vpc_cidr_block
  ip_protocol       = "tcp"
  from_port         = 988
  to_port           = 988
}

resource "aws_fsx_lustre_file_system" "this" {
  count                       = var.fsx_enabled ? 1 : 0
  storage_capacity            = var.fsx_storage_capacity_gib
  deployment_type             = "PERSISTENT_2"
  per_unit_storage_throughput = 125
  subnet_ids                  = [var.subnet_ids[0]]
  security_group_ids          = [aws_security_group.fsx[0].id]
  kms_key_id                  = aws_kms_key.this.arn
  data_compression_type       = "LZ4"

  tags = { Name = "sciflow-${var.name}" }
}

# Links /registry on the file system to the registry prefix; tasks/storage/fsx.py imports a
# published version's metadata through it.
resource "aws_fsx_data_repository_association" "registry" {
  count                = var.fsx_enabled ? 1 : 0
  file_system_id       = aws_fsx_lustre_file_system.this[0].id
  data_repository_path = "s3://${aws_s3_bucket.data.id}/${local.registry_prefix}"
  file_system_path     = "/registry"

  s3 {
    auto_import_policy {
      events = ["NEW", "CHANGED", "DELETED"]
    }
  }
}
