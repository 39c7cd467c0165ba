// Checks response bodies against the OpenAPI document the types were generated from (the
// subset recgw's spec uses), so that the gateway and the generated types cannot silently
// disagree: a field the server sends as null that the spec (and so `api.d.ts`) does not declare
// nullable, a required field left out, or a value of another type is a problem.

import assert from "node:assert/strict";
import type { paths } from "./api.js";

interface Schema {
  $ref?: string;
  type?: string | string[];
  nullable?: boolean;
  enum?: unknown[];
  allOf?: Schema[];
  required?: string[];
  properties?: Record<string, Schema>;
  additionalProperties?: Schema | boolean;
  items?: Schema;
}
type Responses = Record<string, { content?: Record<string, { schema: Schema }> }>;
export interface Spec {
  paths: Record<string, Record<string, { responses: Responses }>>;
  components: { schemas: Record<string, Schema> };
}

export class Conformance {
  /** Every mismatch seen, array indices folded into `[]`. */
  readonly problems = new Set<string>();

  constructor(private readonly spec: Spec) {}

  /** Checks `body` against the schema the spec gives `method path` for `status`. */
  check(path: keyof paths, method: "get" | "post", status: number, body: unknown): void {
    const content = this.spec.paths[path]?.[method]?.responses[String(status)]?.content;
    const media = content && Object.values(content)[0];
    assert.ok(media, `the spec has no ${status} body for ${method.toUpperCase()} ${path}`);
    const found: string[] = [];
    this.conform(body, media.schema, `${method.toUpperCase()} ${path} ${status}: body`, found);
    for (const problem of found) this.problems.add(problem.replace(/\[\d+\]/g, "[]"));
  }

  private resolve(schema: Schema): Schema {
    if (schema.$ref === undefined) return schema;
    const target = this.spec.components.schemas[schema.$ref.replace("#/components/schemas/", "")];
    assert.ok(target, `unresolved $ref ${schema.$ref}`);
    return this.resolve(target);
  }

  private conform(value: unknown, given: Schema, at: string, problems: string[]): void {
    const schema = this.resolve(given);
    const parts = (schema.allOf ?? []).map((part) => this.resolve(part));
    const types = schema.type === undefined ? [] : [schema.type].flat();
    if (value === null) {
      // 3.0 `nullable: true`, or 3.1 `type: [..., "null"]`, on the field or its allOf parts.
      const nullable = (s: Schema) => s.nullable === true || [s.type ?? []].flat().includes("null");
      if (!nullable(schema) && !parts.some(nullable)) {
        problems.push(`${at} is null, but the spec does not declare it nullable`);
      }
      return;
    }
    for (const part of parts) this.conform(value, part, at, problems);
    if (schema.enum && !schema.enum.includes(value)) {
      problems.push(`${at} = ${JSON.stringify(value)} is not in its enum`);
    }
    if (types.length === 0) return;
    const kind = Array.isArray(value) ? "array" : Number.isInteger(value) ? "integer" : typeof value;
    if (!types.includes(kind) && !(kind === "integer" && types.includes("number"))) {
      problems.push(`${at} should be ${types.join(" or ")}, got ${kind}`);
      return;
    }
    if (kind === "array" && schema.items) {
      const items = schema.items;
      (value as unknown[]).forEach((item, i) => this.conform(item, items, `${at}[${i}]`, problems));
    }
    if (kind === "object") {
      const object = value as Record<string, unknown>;
      for (const key of schema.required ?? []) {
        if (!(key in object)) problems.push(`${at}.${key} is required by the spec but missing`);
      }
      for (const [key, field] of Object.entries(object)) {
        const declared = schema.properties?.[key];
        const extra = schema.additionalProperties;
        if (declared) this.conform(field, declared, `${at}.${key}`, problems);
        else if (typeof extra === "object") this.conform(field, extra, `${at}.${key}`, problems);
        else if (extra !== true) problems.push(`${at}.${key} is not declared in the spec`);
      }
    }
  }
}
