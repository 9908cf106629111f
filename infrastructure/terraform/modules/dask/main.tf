# One group for every member of a unit's Dask clusters and parameter-server training: the
# scheduler, its workers, the flow run that is their client, the server and its workers.
# dask-cloudprovider gives the scheduler and the workers the same groups (ComputeUnit
# `security_groups`), so the rules name the group itself as the only source.
resource "aws_security_group" "this" {
  #checkov:skip=CKV2_AWS_5:attached at run time: flows give it to the Fargate tasks they start (ComputeUnit security_groups)
  name        = "${var.name}-dask"
  description = "Dask scheduler, workers and clients; parameter server and its workers"
  vpc_id      = var.vpc_id

  tags = { Name = "${var.name}-dask" }
}

locals {
  # Workers and nannies listen on ports the kernel picks from the ephemeral range (Linux and
  # Fargate: 32768-60999) unless pinned; the scheduler, dashboard and server on fixed ones.
  member_ports = {
    scheduler        = { from = var.scheduler_port, to = var.scheduler_port, what = "Dask scheduler" }
    dashboard        = { from = var.dashboard_port, to = var.dashboard_port, what = "Dask dashboard" }
    parameter-server = { from = var.parameter_server_port, to = var.parameter_server_port, what = "training parameter server" }
    workers          = { from = 32768, to = 60999, what = "Dask workers and nannies (ephemeral ports)" }
  }
}

resource "aws_vpc_security_group_ingress_rule" "members" {
  for_each                     = local.member_ports
  security_group_id            = aws_security_group.this.id
  description                  = "${each.value.what} from members of the group"
  referenced_security_group_id = aws_security_group.this.id
  ip_protocol                  = "tcp"
  from_port                    = each.value.from
  to_port                      = each.value.to
}

resource "aws_vpc_security_group_egress_rule" "members" {
  for_each                     = local.member_ports
  security_group_id            = aws_security_group.this.id
  description                  = "${each.value.what} of members of the group"
  referenced_security_group_id = aws_security_group.this.id
  ip_protocol                  = "tcp"
  from_port                    = each.value.from
  to_port                      = each.value.to
}

resource "aws_vpc_security_group_egress_rule" "https" {
  security_group_id = aws_security_group.this.id
  description       = "HTTPS to AWS APIs, S3, ECR and the Prefect API"
  cidr_ipv4         = "0.0.0.0/0"
  ip_protocol       = "tcp"
  from_port         = 443
  to_port           = 443
}

resource "aws_vpc_security_group_egress_rule" "nfs" {
  security_group_id = aws_security_group.this.id
  description       = "NFS to EFS inside the VPC"
  cidr_ipv4         = var.vpc_cidr_block
  ip_protocol       = "tcp"
  from_port         = 2049
  to_port           = 2049
}

resource "aws_vpc_security_group_egress_rule" "dns" {
  security_group_id = aws_security_group.this.id
  description       = "DNS to the VPC resolver (Cloud Map names)"
  cidr_ipv4         = var.vpc_cidr_block
  ip_protocol       = "udp"
  from_port         = 53
  to_port           = 53
}
