// Generated from wit/policy.wit by gen-types.mjs (jco 1.35); do not edit.
/// <reference path="./interfaces/kapsule-policy-types.d.ts" />
declare module 'kapsule:policy/policy@0.3.0' {
  export type Level = import('kapsule:policy/types@0.3.0').Level;
  export type BatchView = import('kapsule:policy/types@0.3.0').BatchView;
  export type Decisions = import('kapsule:policy/types@0.3.0').Decisions;
  export type TopicPlan = import('kapsule:policy/types@0.3.0').TopicPlan;
  export type Client = import('kapsule:policy/types@0.3.0').Client;
  export type Reveal = import('kapsule:policy/types@0.3.0').Reveal;
  export type SchemaInfo = import('kapsule:policy/types@0.3.0').SchemaInfo;
  export type * as KapsulePolicyTypes030 from 'kapsule:policy/types@0.3.0'; // import kapsule:policy/types@0.3.0
  /**
  * Prepare the policy with its binding's config string (any format the policy chooses,
  * often JSON). Called once per instance before any other export. An error refuses the module
  * and is shown to the operator.
  */
  export function init(config: string): void;
  /**
  * Decide how to treat a whole topic for records produced by `client`. Called once per
  * (topic, client principal) and module version; the answer is cached.
  */
  export function plan(topic: string, client: Client): TopicPlan;
  /**
  * Decide for each record of one batch of a `per-record` topic, produced by `client`.
  * `choices` must have exactly one entry per record of `batch`, each a valid index into
  * `distinct`. With a `memo-key` other than `none`, `batch` holds one record per distinct
  * value not yet cached.
  */
  export function decide(topic: string, client: Client, batch: BatchView): Decisions;
  /**
  * Decide what `client` may read in clear of `topic` on Fetch. Called once per (topic,
  * client principal) and module version; the answer is cached. Policies that do not
  * restrict readers answer `all`.
  */
  export function reveal(topic: string, client: Client): Reveal;
  export type Result<T, E> = { tag: 'ok', val: T } | { tag: 'err', val: E };
}
