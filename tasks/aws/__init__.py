"""AWS in one place: clients for an account, one retry policy, AWS errors as sciflow's, tags.

Part of the shared base: it imports nothing from ``blocks`` or the domain packages. A
compute unit describes its account with an ``AwsAccount`` (``ComputeUnit.aws_account()``).
"""
