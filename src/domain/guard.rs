//! The over-refund guard: whether a refund command fits what is left of its payment.
//!
//! Pure: the store reads a payment's state under its row lock, then asks [`PaymentState::check`]
//! about each command for that payment in arrival order. An accepted command counts against
//! the payment for the next one, so a batch of commands is judged exactly as if they had
//! arrived one at a time.

use super::{FailureCode, FailureReason, GuardSource, RefundCommand};
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

    /// Parses the stored name.
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "command" => Some(Self::Command),
            "ledger" => Some(Self::Ledger),
            _ => None,
        }
    }

    /// The guard source a refund judged against this amount records.
    fn guard(self) -> GuardSource {
        match self {
            Self::Command => GuardSource::Command,
            Self::Ledger => GuardSource::Ledger,
        }
    }
}

/// What guards a refund whose payment amount nothing we hold knows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Fallback {
    /// The provider's adapter asks the refundable amount before the refund call (BVNK's
    /// estimate, BPN's order), so the provider's own figure is the guard.
    pub provider_checks: bool,
    /// `REQUIRE_PAYMENT_AMOUNT`: refuse a refund that nothing guards.
    pub required: bool,
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
    /// Where a known `amount` came from (`None` for rows stored before this was kept:
    /// only commands gave amounts then).
    pub source: Option<AmountSource>,
}

impl PaymentState {
    /// Judges `cmd` against the payment and says what it was judged against. On acceptance
    /// its amount counts as refunded from now on; a refusal leaves the state as it was (a
    /// failed refund refunds nothing). `fallback` applies when no amount is known.
    pub fn check(
        &mut self,
        cmd: &RefundCommand,
        fallback: Fallback,
    ) -> Result<GuardSource, FailureReason> {
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
        let source = match payment_amount {
            Some(_) => self.source.unwrap_or(AmountSource::Command).guard(),
            None if fallback.provider_checks => GuardSource::Provider,
            None if fallback.required => {
                return Err(FailureReason::new(
                    FailureCode::InvalidCommand,
                    format!(
                        "paymentAmount is required (REQUIRE_PAYMENT_AMOUNT=true): no pay-in of payment {} is known and {} does not report the refundable amount before refunding",
                        cmd.transaction_reference, cmd.provider
                    ),
                ))
            }
            None => GuardSource::None,
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
        Ok(source)
    }

    /// Records a newly known amount (and the command's currency with it).
    fn learn(&mut self, amount: Decimal, cmd: &RefundCommand, source: AmountSource) -> Decimal {
        self.amount = Some(amount);
        self.currency = Some(cmd.currency.clone());
        self.learned = Some(source);
        self.source = Some(source);
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
            source: None,
        }
    }

    const OPEN: Fallback = Fallback {
        provider_checks: false,
        required: false,
    };

    #[test]
    fn accepted_commands_count_against_the_next_and_refusals_do_not() {
        let mut p = fresh();
        assert_eq!(
            p.check(&cmd(d("60"), Some(d("100")), "NGN"), OPEN),
            Ok(GuardSource::Command)
        );
        assert_eq!(p.learned, Some(AmountSource::Command));
        let refused = p
            .check(&cmd(d("50"), None, "NGN"), OPEN)
            .expect_err("60 + 50 > 100");
        assert_eq!(refused.code, FailureCode::AmountExceedsRefundable);
        assert!(refused.message.contains("40 of 100"), "{}", refused.message);
        assert_eq!(p.refunded, d("60"));
        assert_eq!(
            p.check(&cmd(d("40"), None, "NGN"), OPEN),
            Ok(GuardSource::Command)
        );
        assert_eq!(p.refunded, d("100"));
    }

    #[test]
    fn a_different_currency_or_payment_amount_is_an_invalid_command() {
        let mut p = fresh();
        p.check(&cmd(d("1"), Some(d("100")), "NGN"), OPEN)
            .expect("first command");
        let c = p
            .check(&cmd(d("1"), None, "USD"), OPEN)
            .expect_err("currency");
        assert_eq!(c.code, FailureCode::InvalidCommand);
        let a = p
            .check(&cmd(d("1"), Some(d("90")), "NGN"), OPEN)
            .expect_err("amount");
        assert!(a.message.contains("differs from the known amount 100"));
    }

    #[test]
    fn the_ledger_supplies_an_unknown_amount_and_an_unknown_one_lets_the_provider_judge() {
        let mut p = fresh();
        assert_eq!(
            p.check(&cmd(d("500"), None, "NGN"), OPEN),
            Ok(GuardSource::None)
        );
        assert_eq!(p.learned, None);
        let mut p = PaymentState {
            ledger: Some((d("10"), Some("ngn".into()))),
            ..fresh()
        };
        assert_eq!(
            p.check(&cmd(d("5"), None, "NGN"), OPEN),
            Ok(GuardSource::Ledger)
        );
        assert_eq!(p.learned, Some(AmountSource::Ledger));
        assert!(p.check(&cmd(d("6"), None, "NGN"), OPEN).is_err());
        let mut p = PaymentState {
            ledger: Some((d("10"), Some("USD".into()))),
            ..fresh()
        };
        assert!(p.check(&cmd(d("5"), None, "NGN"), OPEN).is_err());
    }

    #[test]
    fn the_source_is_recorded_and_require_payment_amount_refuses_an_unguarded_refund() {
        // A payment whose amount an earlier command gave is still "command"; the ledger's
        // is "ledger" for every later refund too.
        let mut p = PaymentState {
            amount: Some(d("100")),
            source: Some(AmountSource::Ledger),
            ..fresh()
        };
        assert_eq!(
            p.check(&cmd(d("1"), None, "NGN"), OPEN),
            Ok(GuardSource::Ledger)
        );
        let provider = Fallback {
            provider_checks: true,
            required: true,
        };
        assert_eq!(
            fresh().check(&cmd(d("1"), None, "NGN"), provider),
            Ok(GuardSource::Provider)
        );
        let required = Fallback {
            provider_checks: false,
            required: true,
        };
        let mut p = fresh();
        let refused = p
            .check(&cmd(d("1"), None, "NGN"), required)
            .expect_err("nothing guards it");
        assert_eq!(refused.code, FailureCode::InvalidCommand);
        assert!(
            refused.message.contains("REQUIRE_PAYMENT_AMOUNT"),
            "{}",
            refused.message
        );
        assert_eq!(p.refunded, Decimal::ZERO, "a refusal refunds nothing");
        // With a paymentAmount it is guarded, so required changes nothing.
        assert_eq!(
            p.check(&cmd(d("1"), Some(d("10")), "NGN"), required),
            Ok(GuardSource::Command)
        );
    }
}
