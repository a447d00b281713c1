/**
 * Tickets: the one copyable string a sharer hands out. A ticket is a signed
 * grant (crypto/grant.ts) — region id, sharer key, transport and addresses,
 * rights, expiry, signature — in lower-case base32 behind the prefix "qm1"
 * ("quicmap, ticket format 1"). Base32 rather than base64url: no '-' or '_',
 * so a double-click selects the whole ticket in a terminal, and case
 * mangling cannot damage it. ~260 characters for one address.
 */
import { QuicmapError } from '../base/errors.ts';
import { base32Decode, base32Encode } from './identity.ts';
import { checkGrantTime, openGrant, type GrantClaims, type SignedGrant } from './grant.ts';

export const TICKET_PREFIX = 'qm1';

export interface Ticket {
  claims: GrantClaims;
  /** The signed grant bytes, presented to the sharer in HELLO. */
  grant: Uint8Array;
  text: string;
}

export function encodeTicket(grant: SignedGrant): string {
  return TICKET_PREFIX + base32Encode(grant.bytes);
}

/**
 * Parse and check a ticket offline: prefix, encoding, signature by the key
 * it names, validity window. Errors are EINVAL (not a ticket at all) or
 * EACCES (a ticket, but altered or expired), with a message for the user.
 */
export async function parseTicket(text: string, nowMs = Date.now()): Promise<Ticket> {
  const t = text.trim();
  if (t.length === 0) throw new QuicmapError('EINVAL', 'no ticket given (a ticket is the "qm1..." line `quicmap share` printed)');
  if (!t.toLowerCase().startsWith(TICKET_PREFIX)) {
    throw new QuicmapError('EINVAL', `not a quicmap ticket: it should start with "${TICKET_PREFIX}" (got "${t.slice(0, 12)}...")`);
  }
  let bytes: Uint8Array;
  try {
    bytes = base32Decode(t.slice(TICKET_PREFIX.length));
  } catch {
    throw new QuicmapError('EINVAL', 'ticket is damaged: it contains characters that are not base32 (was it cut or edited?)');
  }
  let claims: GrantClaims;
  try {
    claims = await openGrant(bytes);
  } catch (e) {
    throw new QuicmapError('EACCES', `ticket refused: ${(e as Error).message}`);
  }
  try {
    checkGrantTime(claims, nowMs);
  } catch (e) {
    throw new QuicmapError('EACCES', `ticket refused: ${(e as Error).message}`);
  }
  return { claims, grant: bytes, text: t };
}
