//! One `decide` call prepared by [`LoadedModule::prepare_decide`] ([`DecideCall`]): the batch
//! laid out for the guest, run on a blocking thread, its answer checked and spread over the batch
//! through the memo, whose audits it reports.

use super::*;

/// What a [`DecideCall`] gave.
pub(crate) enum Decided {
    /// One decision per record, in order.
    Records(Vec<RecordDecision>),
    /// An audit found the memo wrong: the memo is now off for this module version and the batch
    /// must be prepared again (it then goes to the guest record by record).
    MemoBroken,
}

/// What [`LoadedModule::prepare_decide`] found: the answer, or the guest call still needed.
pub(crate) enum Decide {
    /// Every record is decided without running guest code.
    Done(Vec<RecordDecision>),
    /// The guest must see a batch; run [`DecideCall::run`] on a blocking thread.
    Call(Box<DecideCall>),
}

/// A `decide` call ready to run: the batch laid out for the guest, owning everything it needs.
pub(crate) struct DecideCall {
    pub(super) module: Arc<LoadedModule>,
    pub(super) plan: Plan,
    pub(super) topic: String,
    pub(super) principal: Option<Principal>,
    pub(super) batch: wit::BatchView,
    /// With a memo key: how to spread the answers for the representatives over the batch.
    pub(super) memo: Option<Pending>,
    /// What `describe-schema` answers during the call ([`DecideCall::with_schemas`]).
    pub(super) schemas: BatchSchemas,
}

impl DecideCall {
    /// The distinct schema ids of the batch the guest will see, when the module imports
    /// `describe-schema` (else none): fetch them ([`super::super::schemas::prefetch`]) and hand them to
    /// [`DecideCall::with_schemas`] before [`DecideCall::run`].
    pub(crate) fn schema_ids(&self) -> Vec<u32> {
        if self.module.describes_schemas {
            super::super::schemas::distinct_ids(&self.batch)
        } else {
            Vec::new()
        }
    }

    /// Sets what `describe-schema` answers during [`DecideCall::run`] (for this call's topic).
    pub(crate) fn with_schemas(&mut self, schemas: BatchSchemas) {
        self.schemas = schemas.for_topic(&self.topic);
    }

    /// Runs the guest's `decide` (blocking, bounded by the batch's deadline) and validates its
    /// answer: one decision per record, in order. Failures are accounted to `c`. When an audit
    /// finds the memo wrong, the memo is turned off for this module version (reported to `c`)
    /// and [`Decided::MemoBroken`] asks the caller to prepare the batch again.
    pub(crate) fn run(self: Box<Self>, c: &Caller<'_>) -> Result<Decided, PolicyError> {
        let n = answer::record_count(&self.batch);
        let started = Instant::now();
        let raw = self.module.call_decide(
            &self.topic,
            self.principal.as_ref(),
            &self.batch,
            &self.schemas,
        );
        c.stats.record_call(started.elapsed());
        let raw = raw.map_err(|e| c.call_failed(e))?;
        let (distinct, choices) = answer::decisions(c, raw, n, &self.plan.0, &self.topic)?;
        let decided = choices
            .iter()
            .map(|&i| distinct[i as usize].clone())
            .collect();
        let Some(pending) = self.memo else {
            return Ok(Decided::Records(decided));
        };
        match pending.finish(
            &self.module.answers,
            &self.topic,
            self.principal.as_ref(),
            decided,
        ) {
            Ok(d) => Ok(Decided::Records(d)),
            Err(mismatch) => {
                if self.module.memo_audit.mark_broken() {
                    c.memo_broken(&self.topic, self.plan.memo_key(), &mismatch);
                }
                Ok(Decided::MemoBroken)
            }
        }
    }
}
