"""The names of the contracts' states and indexes and the operations' defaults, with no chain access.

CLI options list them in --help (a `click.Choice`, a shown default); --help imports no web3, so they live here
rather than beside the operations that use them (``motor``, ``loan``, ``crop`` import them from here).
"""

from __future__ import annotations

#: DeliveryEscrow.State, by value
ESCROW_STATES = ("none", "funded", "released", "refunded", "cancelled")
#: MeteredBilling.AgreementStatus, by value
AGREEMENT_STATUSES = ("none", "offered", "active", "suspended", "closed", "cancelled")
#: MotorInsurance.PolicyStatus, by value
POLICY_STATUSES = ("none", "offered", "active", "lapsed", "closed", "cancelled")
#: HealthInsurance.PolicyStatus, by value
HEALTH_POLICY_STATUSES = ("none", "offered", "active", "cancelled", "closed")
#: LoanBook.LoanStatus, by value
LOAN_STATUSES = ("none", "offered", "active", "repaid", "cancelled")
#: CropInsurance.Index, by value: Index.RainfallBelow, Index.HotDaysAbove
INDEXES = ("rain", "heat")
#: covers paid by one `crop payout` transaction
DEFAULT_PAYOUT_BATCH = 50
#: The contracts built on the pull-payment base, whose withdrawals a WithdrawalGuard covers, by their CLI names
GUARDED_LEDGERS = {
    "escrow": "DeliveryEscrow",
    "billing": "MeteredBilling",
    "motor": "MotorInsurance",
    "crop": "CropInsurance",
    "loan": "LoanBook",
}
