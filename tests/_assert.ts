/**
 * Test assertions. `@std/assert` lives only on the JSR registry, which these machines cannot
 * reach; these wrap `node:assert` with the same names, so moving to `@std/assert` later is a
 * one-file change.
 *
 * @module
 */

import nodeAssert from "node:assert/strict";

/**
 * Asserts a condition.
 * @param cond The condition.
 * @param msg Message on failure.
 */
export function assert(cond: unknown, msg?: string): asserts cond {
  nodeAssert.ok(cond, msg);
}

/**
 * Asserts deep equality.
 * @param actual What the code produced.
 * @param expected What it should be.
 * @param msg Message on failure.
 */
export function assertEquals<T>(actual: unknown, expected: T, msg?: string): void {
  nodeAssert.deepStrictEqual(actual, expected, msg);
}

/**
 * Asserts that a string matches a pattern.
 * @param actual The string.
 * @param re The pattern.
 */
export function assertMatch(actual: string, re: RegExp): void {
  nodeAssert.match(actual, re);
}

/**
 * Asserts that a string contains another.
 * @param actual The string.
 * @param expected The part.
 */
export function assertStringIncludes(actual: string, expected: string): void {
  if (!actual.includes(expected)) {
    throw new nodeAssert.AssertionError({
      message: `Expected ${JSON.stringify(actual)} to include ${JSON.stringify(expected)}`,
    });
  }
}

type Ctor<E> = new (...args: never[]) => E;

/**
 * Asserts that a function throws.
 * @param fn The function.
 * @param ErrorClass The class the error must be.
 * @param includes Text the message must contain.
 * @returns The error.
 */
export function assertThrows<E extends Error = Error>(
  fn: () => unknown,
  ErrorClass?: Ctor<E>,
  includes?: string,
): E {
  try {
    fn();
  } catch (e) {
    return check(e, ErrorClass, includes);
  }
  throw new nodeAssert.AssertionError({ message: "Expected the function to throw" });
}

/**
 * Asserts that a promise rejects.
 * @param fn Returns the promise.
 * @param ErrorClass The class the error must be.
 * @param includes Text the message must contain.
 * @returns The error.
 */
export async function assertRejects<E extends Error = Error>(
  fn: () => Promise<unknown>,
  ErrorClass?: Ctor<E>,
  includes?: string,
): Promise<E> {
  try {
    await fn();
  } catch (e) {
    return check(e, ErrorClass, includes);
  }
  throw new nodeAssert.AssertionError({ message: "Expected the promise to reject" });
}

function check<E extends Error>(e: unknown, ErrorClass?: Ctor<E>, includes?: string): E {
  if (ErrorClass && !(e instanceof ErrorClass)) {
    throw new nodeAssert.AssertionError({
      message: `Expected ${ErrorClass.name}, got ${e instanceof Error ? e.name : typeof e}: ${e}`,
    });
  }
  if (includes && !(e instanceof Error && e.message.includes(includes))) {
    throw new nodeAssert.AssertionError({
      message: `Expected the error message to include ${JSON.stringify(includes)}, got ${
        JSON.stringify(e instanceof Error ? e.message : e)
      }`,
    });
  }
  return e as E;
}

/**
 * Asserts two byte arrays are equal, naming the first difference (a deep-equal diff of a disk
 * image would not fit in memory).
 * @param actual What the code produced.
 * @param expected What it should be.
 */
export function assertBytesEqual(actual: Uint8Array, expected: Uint8Array): void {
  if (actual.length !== expected.length) {
    throw new nodeAssert.AssertionError({
      message: `Expected ${expected.length} bytes, got ${actual.length}`,
    });
  }
  for (let i = 0; i < actual.length; i++) {
    if (actual[i] !== expected[i]) {
      let end = i;
      while (end < actual.length && actual[end] !== expected[end]) end++;
      throw new nodeAssert.AssertionError({
        message: `Bytes differ from offset ${i} to ${end}: got ${actual[i]}, expected ${
          expected[i]
        }`,
      });
    }
  }
}
