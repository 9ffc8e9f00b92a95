//! The over-refund guard: whether a refund command fits what is left of its payment.
//!
//! Pure: the store reads a payment's state under its row lock, then asks [`PaymentState::check`]
//! about each command for that payment in arrival order. An accepted command counts against
//! the payment for the next one, so a batch of commands is judged exactly as if they had
//! arrived one at a time.

use super::{FailureCode, FailureReason, RefundCommand};
use rust_decimal::Decimal;

/// Where a payment's amount came from, once it is known.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AmountSource {
    /// A command's `paymentAmount`.
    Command,
    /// The pay-ins ledger (a provider's payment webhook).
    Ledger,
}

impl AmountSource {
    /// Stored name (`payments.amount_source`).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Command => "command",
            Self::Ledger => "ledger",
        }
    }
}

/// What is known of one payment while its row is locked.
#[derive(Debug, Clone, PartialEq)]
pub struct PaymentState {
    /// The payment's amount, if any command or the ledger gave it.
    pub amount: Option<Decimal>,
    /// The payment's currency, as first given.
    pub currency: Option<String>,
    /// Sum of its refunds that are not failed (pending or completed).
    pub refunded: Decimal,
    /// What the pay-ins ledger says the payment was: amount and currency.
    pub ledger: Option<(Decimal, Option<String>)>,
    /// Set when the amount became known during this check: the store saves it.
    pub learned: Option<AmountSource>,
}

impl PaymentState {
    /// Judges `cmd` against the payment. On acceptance its amount counts as refunded from
    /// now on; a refusal leaves the state as it was (a failed refund refunds nothing).
    pub fn check(&mut self, cmd: &RefundCommand) -> Result<(), FailureReason> {
        if let Some(c) = self.currency.as_deref().filter(|c| *c != cmd.currency) {
            return Err(FailureReason::new(
                FailureCode::InvalidCommand,
                format!(
                    "currency {} differs from the currency {c} of payment {}",
                    cmd.currency, cmd.transaction_reference
                ),
            ));
        }
        let payment_amount = match (self.amount, cmd.payment_amount) {
            (Some(k), Some(given)) if k != given => {
                return Err(FailureReason::new(
                    FailureCode::InvalidCommand,
                    format!(
                        "paymentAmount {given} differs from the known amount {k} of payment {}",
                        cmd.transaction_reference
                    ),
                ))
            }
            (Some(k), _) => Some(k),
            (None, Some(given)) => Some(self.learn(given, cmd, AmountSource::Command)),
            // No amount from any command: the pay-ins ledger (provider webhooks) may know it.
            (None, None) => match self.ledger.clone() {
                Some((_, Some(c))) if !c.eq_ignore_ascii_case(&cmd.currency) => {
                    return Err(FailureReason::new(
                        FailureCode::InvalidCommand,
                        format!(
                            "currency {} differs from the currency {c} the provider reported for payment {}",
                            cmd.currency, cmd.transaction_reference
                        ),
                    ))
                }
                Some((amount, _)) => Some(self.learn(amount, cmd, AmountSource::Ledger)),
                None => None,
            },
        };
        // Unknown payment amount: the provider's own balance check is the guard.
        if let Some(payment_amount) = payment_amount {
            let refunded = self.refunded;
            if refunded + cmd.amount > payment_amount {
                let left = (payment_amount - refunded).max(Decimal::ZERO);
                return Err(FailureReason::new(
                    FailureCode::AmountExceedsRefundable,
                    format!(
                        "refund of {} {} exceeds what is left to refund on payment {}: {left} of {payment_amount} ({refunded} already refunded or in progress)",
                        cmd.amount, cmd.currency, cmd.transaction_reference
                    ),
                ));
            }
        }
        self.refunded += cmd.amount;
        Ok(())
    }

    /// Records a newly known amount (and the command's currency with it).
    fn learn(&mut self, amount: Decimal, cmd: &RefundCommand, source: AmountSource) -> Decimal {
        self.amount = Some(amount);
        self.currency = Some(cmd.currency.clone());
        self.learned = Some(source);
        amount
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::ProviderName;

    fn d(s: &str) -> Decimal {
        s.parse().expect("test decimal")
    }

    fn cmd(amount: Decimal, payment: Option<Decimal>, currency: &str) -> RefundCommand {
        let mut raw = serde_json::json!({
            "refundReference": "r-1", "provider": ProviderName::VaServices.as_str(),
            "transactionReference": "t-1", "amount": amount.to_string(), "currency": currency,
            "reason": "test",
            "destination": {"accountNumber": "0040088210", "bankCode": "000012"}
        });
        if let Some(p) = payment {
            raw["paymentAmount"] = p.to_string().into();
        }
        RefundCommand::from_value(raw).expect("valid test command")
    }

    fn fresh() -> PaymentState {
        PaymentState {
            amount: None,
            currency: None,
            refunded: Decimal::ZERO,
            ledger: None,
            learned: None,
        }
    }

    #[test]
    fn accepted_commands_count_against_the_next_and_refusals_do_not() {
        let mut p = fresh();
        assert_eq!(p.check(&cmd(d("60"), Some(d("100")), "NGN")), Ok(()));
        assert_eq!(p.learned, Some(AmountSource::Command));
        let refused = p
            .check(&cmd(d("50"), None, "NGN"))
            .expect_err("60 + 50 > 100");
        assert_eq!(refused.code, FailureCode::AmountExceedsRefundable);
        assert!(refused.message.contains("40 of 100"), "{}", refused.message);
        assert_eq!(p.refunded, d("60"));
        assert_eq!(p.check(&cmd(d("40"), None, "NGN")), Ok(()));
        assert_eq!(p.refunded, d("100"));
    }

    #[test]
    fn a_different_currency_or_payment_amount_is_an_invalid_command() {
        let mut p = fresh();
        p.check(&cmd(d("1"), Some(d("100")), "NGN"))
            .expect("first command");
        let c = p.check(&cmd(d("1"), None, "USD")).expect_err("currency");
        assert_eq!(c.code, FailureCode::InvalidCommand);
        let a = p
            .check(&cmd(d("1"), Some(d("90")), "NGN"))
            .expect_err("amount");
        assert!(a.message.contains("differs from the known amount 100"));
    }

    #[test]
    fn the_ledger_supplies_an_unknown_amount_and_an_unknown_one_lets_the_provider_judge() {
        let mut p = fresh();
        assert_eq!(p.check(&cmd(d("500"), None, "NGN")), Ok(()));
        assert_eq!(p.learned, None);
        let mut p = PaymentState {
            ledger: Some((d("10"), Some("ngn".into()))),
            ..fresh()
        };
        assert_eq!(p.check(&cmd(d("5"), None, "NGN")), Ok(()));
        assert_eq!(p.learned, Some(AmountSource::Ledger));
        assert!(p.check(&cmd(d("6"), None, "NGN")).is_err());
        let mut p = PaymentState {
            ledger: Some((d("10"), Some("USD".into()))),
            ..fresh()
        };
        assert!(p.check(&cmd(d("5"), None, "NGN")).is_err());
    }
}
