<#
.SYNOPSIS
    Runs the kepoch A/B inside a Windows guest with `kepochctl ab` (optionally installing the driver first).

.DESCRIPTION
    Run in an elevated PowerShell inside the guest. Prints the topology and boot options (maximum and active
    processors, groups, maxproc/groupsize, whether the OS supports processor hot-add), optionally installs the
    driver package, then calls Invoke-KepochAB, which hands everything to `kepochctl ab`: one JSON file per
    round and strategy in OutputPath, the registry and the service restored afterwards. Copy the folder to
    the host and run `kepoch-sim report results/*.json`.

.PARAMETER OutputPath
    Folder for the per-round JSON files.

.PARAMETER Rounds
    Rounds (default 8; every round runs every strategy).

.PARAMETER Strategies
    Strategies (default lazy, callback, eager).

.PARAMETER PackagePath
    When given, install the driver package from this folder first.

.PARAMETER LoadRate
    Load generator rate in operations per second.

.PARAMETER LoadSeconds
    Load duration per round and strategy.

.EXAMPLE
    .\Invoke-KepochAB.ps1 -PackagePath C:\kepoch\package -OutputPath C:\kepoch\results -Rounds 8
#>
[CmdletBinding(SupportsShouldProcess = $true)]
param(
    [Parameter(Mandatory = $true)] [string] $OutputPath,
    [int] $Rounds = 8,
    [string[]] $Strategies = @('lazy', 'callback', 'eager'),
    [string] $PackagePath,
    [int] $LoadRate = 100000,
    [int] $LoadSeconds = 30
)

Set-StrictMode -Version Latest
$ErrorActionPreference = 'Stop'
Import-Module (Join-Path $PSScriptRoot 'KepochGuest.psm1') -Force

$topology = Get-KepochTopology
Write-Host ("kepoch: {0} max / {1} active processors in {2} group(s); maxproc {3}, groupsize {4}; hot-add supported by this OS: {5}" -f `
        $topology.max_processors, $topology.active_processors, $topology.max_groups, $topology.bcd_maxproc, $topology.bcd_groupsize, $topology.hot_add_supported)
if ($topology.max_processors -gt $topology.active_processors -and $Strategies -contains 'eager') {
    Write-Host 'kepoch: max > active here, so eager is expected to refuse to load (recorded as loaded = false), like the original design.'
}
if ($PackagePath) { Install-KepochDriver -PackagePath $PackagePath -Confirm:$false -WhatIf:$WhatIfPreference | Out-Null }
$files = Invoke-KepochAB -OutputPath $OutputPath -Rounds $Rounds -Strategies $Strategies -LoadRate $LoadRate -LoadSeconds $LoadSeconds -WhatIf:$WhatIfPreference
Write-Host "kepoch: $(@($files).Count) file(s) in $OutputPath; compare on the host with: kepoch-sim report results/*.json"
