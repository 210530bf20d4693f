// The errors a rules function throws, for every contract.

/** The row is bad: dead-lettered with this reason; the run goes on. */
export class Reject extends Error {
  constructor(reason) { super(reason); this.reason = reason; }
}

/** The run itself is wrong: it stops before the current batch. */
export class Fatal extends Error {
  constructor(reason) { super(reason); this.reason = reason; }
}
