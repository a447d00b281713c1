/**
 * What the NBD layer knows about an export: the name, the store behind it and
 * the facts it advertises. Transmission flags are derived from the store's
 * caps so that they are always truthful (no SEND_TRIM unless trim does
 * something, no MULTI_CONN unless a flush on one connection covers all).
 */
import type { ReadWriterAt } from '../rwat.ts';
import {
  TFLAG_CAN_MULTI_CONN,
  TFLAG_HAS_FLAGS,
  TFLAG_READ_ONLY,
  TFLAG_SEND_FAST_ZERO,
  TFLAG_SEND_FLUSH,
  TFLAG_SEND_FUA,
  TFLAG_SEND_TRIM,
  TFLAG_SEND_WRITE_ZEROES,
} from './constants.ts';

export interface ExportInfo {
  name: string;
  description: string;
  size: number;
  readOnly: boolean;
  /** Transmission flags as sent to the client. */
  flags: number;
  minBlock: number;
  preferredBlock: number;
  maxBlock: number;
}

export interface ExportEntry extends ExportInfo {
  store: ReadWriterAt;
}

/** The lookups the handshake needs; implemented by the server's export table. */
export interface ExportCatalog {
  get(name: string): ExportInfo | undefined;
  list(): ExportInfo[];
  /** The export a client gets when it asks for the empty name. */
  defaultName(): string | undefined;
}

export function transmissionFlags(caps: ReadWriterAt['caps'], readOnly: boolean): number {
  let flags = TFLAG_HAS_FLAGS | TFLAG_SEND_FLUSH | TFLAG_SEND_FUA;
  if (readOnly) flags |= TFLAG_READ_ONLY;
  else {
    flags |= TFLAG_SEND_WRITE_ZEROES;
    if (caps.canTrim) flags |= TFLAG_SEND_TRIM;
    if (caps.fastZero) flags |= TFLAG_SEND_FAST_ZERO;
  }
  if (caps.multiConn) flags |= TFLAG_CAN_MULTI_CONN;
  return flags;
}
