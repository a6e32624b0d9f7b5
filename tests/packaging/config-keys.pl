#!/usr/bin/perl
# Print the configuration keys that Rust config structs accept, one per line.
#
#   config-keys.pl [--root STRUCT] FILE... [--also FILE...]
#
# Reads the structs that derive serde's Deserialize in FILE... (the daemon's own
# config modules) and, for resolving field types only, in the --also files (e.g.
# the worker's config, whose sections the coordinator may embed). Starting from
# the root structs -- those of FILE... that no other struct uses as a field type,
# or the one named with --root -- it prints every key a YAML file may hold:
#
#   key            a field (its serde name: rename honoured, rename_all applied)
#   alias          each #[serde(alias = "...")] of a field, at the same place
#   sec.key        fields of a struct-typed field (through Option<>, Box<>)
#   list[].key     fields of the element struct of a Vec<> field
#   (flatten)      fields of a #[serde(flatten)] field, without a prefix
#
# Fields with #[serde(skip)] or skip_deserializing are left out. Types that are
# not structs found in the files (enums, serde_yaml::Value, maps, std types)
# end the descent: the field's key is printed, nothing below it.
use strict;
use warnings;

my (@own, @also, $root);
my $list = \@own;
while (@ARGV) {
    my $a = shift @ARGV;
    if ($a eq '--root') { $root = shift @ARGV // die "--root needs a struct name\n"; }
    elsif ($a eq '--also') { $list = \@also; }
    else { push @$list, $a; }
}
die "usage: $0 [--root STRUCT] FILE... [--also FILE...]\n" unless @own;

# A balanced [...] (for attributes), <...> (generics) and {...} (bodies).
my $brackets = qr/(?<br>\[(?:[^\[\]"]++|"(?:\\.|[^"\\])*"|(?&br))*\])/;
my $braces   = qr/(?<bb>\{(?:[^{}"]++|"(?:\\.|[^"\\])*"|(?&bb))*\})/;

# Remove comments (outside string literals) so that commented-out fields and
# doc comments do not count.
sub strip_comments {
    my ($text) = @_;
    $text =~ s{("(?:\\.|[^"\\])*")|//[^\n]*|/\*.*?\*/}{defined $1 ? $1 : ' '}gse;
    return $text;
}

# serde's rename_all conventions, for snake_case field names.
sub apply_rename_all {
    my ($rule, $name) = @_;
    return $name unless defined $rule;
    my @w = split /_/, $name;
    return lc $name if $rule eq 'lowercase';
    return uc $name if $rule eq 'UPPERCASE' || $rule eq 'SCREAMING_SNAKE_CASE';
    return $name if $rule eq 'snake_case';
    return join('-', @w) if $rule eq 'kebab-case';
    return uc join('-', @w) if $rule eq 'SCREAMING-KEBAB-CASE';
    return $w[0] . join('', map { ucfirst } @w[1 .. $#w]) if $rule eq 'camelCase';
    return join('', map { ucfirst } @w) if $rule eq 'PascalCase';
    die "config-keys.pl: unknown rename_all rule \"$rule\"\n";
}

# The serde(...) contents of a list of attributes, joined.
sub serde_args {
    my (@attrs) = @_;
    return join ',', map { /^#\[\s*serde\s*\((.*)\)\s*\]$/s ? $1 : () } @attrs;
}

# Split a struct body at top-level commas.
sub split_fields {
    my ($body) = @_;
    my (@parts, $cur, $depth);
    $cur = ''; $depth = 0;
    while ($body =~ /\G("(?:\\.|[^"\\])*"|[\[\](){}<>,]|[^\[\](){}<>,"]+)/gs) {
        my $t = $1;
        if ($t =~ /^[\[({<]$/) { $depth++ }
        elsif ($t =~ /^[\])}>]$/) { $depth-- }
        if ($t eq ',' && $depth == 0) { push @parts, $cur; $cur = ''; next }
        $cur .= $t;
    }
    push @parts, $cur if $cur =~ /\S/;
    return @parts;
}

my %structs;    # name => { fields => [...], own => 0/1 }
sub read_file_structs {
    my ($file, $own) = @_;
    open my $fh, '<', $file or die "config-keys.pl: cannot read $file: $!\n";
    my $text = strip_comments(do { local $/; <$fh> });
    while ($text =~ /((?:#$brackets\s*)*)(?:pub(?:\s*\([^)]*\))?\s+)?struct\s+(\w+)\s*(?:<[^{;]*?>)?\s*(?:where[^{;]*)?$braces/gs) {
        my ($attrs, $name, $body) = ($1, $3, $+{bb});
        my @attrs = $attrs =~ /(#$brackets)/g;
        @attrs = grep { defined && /^#/ } @attrs;
        next unless grep { /^#\[\s*derive\s*\([^)]*\bDeserialize\b/s } @attrs;
        my $sargs = serde_args(@attrs);
        my ($rename_all) = $sargs =~ /\brename_all\s*=\s*"([^"]+)"/;
        ($rename_all) = $sargs =~ /\brename_all\s*\([^)]*\bdeserialize\s*=\s*"([^"]+)"/ unless defined $rename_all;
        $body = substr $body, 1, -1;
        my @fields;
        for my $part (split_fields($body)) {
            my @fattrs = $part =~ /(#$brackets)/g;
            @fattrs = grep { defined && /^#/ } @fattrs;
            (my $decl = $part) =~ s/#$brackets//g;
            $decl =~ /^\s*(?:pub(?:\s*\([^)]*\))?\s+)?(?:r#)?(\w+)\s*:\s*(.+?)\s*$/s or next;
            my ($fname, $type) = ($1, $2);
            my $fargs = serde_args(@fattrs);
            next if $fargs =~ /\bskip\b(?!_)|\bskip_deserializing\b/;
            my $key = apply_rename_all($rename_all, $fname);
            if ($fargs =~ /\brename\s*=\s*"([^"]+)"/) { $key = $1 }
            elsif ($fargs =~ /\brename\s*\([^)]*\bdeserialize\s*=\s*"([^"]+)"/) { $key = $1 }
            my @aliases = $fargs =~ /\balias\s*=\s*"([^"]+)"/g;
            push @fields, {
                key => $key, aliases => \@aliases, type => $type,
                flatten => ($fargs =~ /\bflatten\b/ ? 1 : 0),
            };
        }
        warn "config-keys.pl: struct $name defined twice; using the one in $file\n"
            if $structs{$name} && $structs{$name}{own} == $own;
        $structs{$name} = { fields => \@fields, own => $own }
            unless $structs{$name} && $structs{$name}{own} && !$own;
    }
}
read_file_structs($_, 1) for @own;
read_file_structs($_, 0) for @also;

# The struct a field type leads to, and whether it is a list.
# Option<T>, Box<T> are transparent; Vec<T> makes a list; paths keep their last
# segment. Anything else (maps, enums, foreign types) gives no struct.
sub resolve {
    my ($type) = @_;
    my $list = 0;
    $type =~ s/\s+//g;
    while (1) {
        $type =~ s/^(?:\w+::)*//;
        if ($type =~ /^(?:Option|Box)<(.*)>$/) { $type = $1; next }
        if ($type =~ /^Vec<(.*)>$/) { $type = $1; $list = 1; next }
        last;
    }
    return ($structs{$type} ? $type : undef, $list);
}

my %used;
for my $s (values %structs) {
    for my $f (@{ $s->{fields} }) {
        my ($t) = resolve($f->{type});
        $used{$t} = 1 if defined $t;
    }
}
my @roots;
if (defined $root) {
    die "config-keys.pl: no Deserialize struct named $root\n" unless $structs{$root};
    @roots = ($root);
} else {
    @roots = sort grep { $structs{$_}{own} && !$used{$_} } keys %structs;
}
die "config-keys.pl: no config struct deriving Deserialize found in @own\n" unless @roots;
print STDERR "config-keys.pl: root struct(s): @roots\n" if $ENV{CONFIG_KEYS_VERBOSE};

my %out;
sub walk {
    my ($name, $prefix, $seen) = @_;
    die "config-keys.pl: struct $name contains itself\n" if $seen->{$name};
    local $seen->{$name} = 1;
    for my $f (@{ $structs{$name}{fields} }) {
        my ($t, $list) = resolve($f->{type});
        if ($f->{flatten}) {
            walk($t, $prefix, $seen) if defined $t;
            next;
        }
        $out{$prefix . $_} = 1 for $f->{key}, @{ $f->{aliases} };
        next unless defined $t;
        for my $k ($f->{key}, @{ $f->{aliases} }) {
            walk($t, $prefix . $k . ($list ? '[].' : '.'), $seen);
        }
    }
}
walk($_, '', {}) for @roots;
print "$_\n" for sort keys %out;
